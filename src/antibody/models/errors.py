"""Errors of model loading."""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model cannot be loaded or prepared; the message names the config key or the asset
    and says how to fix it (e.g. ``make install`` for a missing asset package)."""
