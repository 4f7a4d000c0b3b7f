"""The demo: the attack-and-defence story on one config (run) and its Markdown tables, one
line per model with the paired comparisons and the weight summary (tables)."""
