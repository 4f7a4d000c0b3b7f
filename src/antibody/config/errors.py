"""Errors raised for bad user input, before any expensive work starts."""


class ConfigError(ValueError):
    """A configuration problem; the message names the key (and file:line) and the fix."""


class DataError(ValueError):
    """A data problem; the message names the file and line, field or split."""
