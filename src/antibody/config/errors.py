"""The error types of bad user input, as the config package has always exported them (they
live in the bottom module ``antibody.errors``)."""

from antibody.errors import ConfigError, DataError

__all__ = ["ConfigError", "DataError"]
