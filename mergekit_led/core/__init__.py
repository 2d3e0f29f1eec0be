"""LED-Merging's pure core: the election math and the method's parameters (no I/O)."""
