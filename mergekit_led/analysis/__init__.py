"""What an ``led_merging`` config elects: statistics, the model card section, reports."""
