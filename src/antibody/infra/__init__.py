"""Bottom layer shared by every package (``files``: crash-safe writes, JSONL, YAML reads;
``progress``: the rich progress bars of long steps).

It imports nothing from antibody except ``antibody.errors`` (the error types its messages
use), so any module can depend on it without creating an import cycle.
"""
