"""Command-line entry points: `python -m antibody <command>` and the Make targets."""
