"""Errors raised for bad user input, before any expensive work starts.

The bottom of the package: it imports nothing of ours, so every layer (infra, config, data,
...) can raise them without importing a layer above it (tests/test_layers.py).
"""


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file:line) and the fix."""


class DataError(ValueError):
    """A data problem; the message names the file and line, field or split."""
