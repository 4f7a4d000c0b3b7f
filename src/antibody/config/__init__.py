"""Typed configuration: schema dataclasses, composition from conf/, validation."""

from antibody.config.compose import compose, load_saved, to_container, to_yaml
from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import Config

__all__ = ["Config", "ConfigError", "DataError", "compose", "load_saved", "to_container", "to_yaml"]
