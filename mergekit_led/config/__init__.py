"""Reading ``led_merging`` configs: loading, walking their inputs, whole-config checks."""
