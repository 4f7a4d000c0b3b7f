"""The source registry: one loader per SourceName, dispatched through a dict.

Every loader takes a SourceContext and returns a list of Records. `load_source` checks
what every consumer relies on (non-empty, unique uids, refusal view set, source tag),
so a loader bug surfaces here instead of as a silent training artefact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import DataConfig, SourceName, TaskConfig
from antibody.data.records import Record

# raw user instructions -> the model's greedy answers (chat template applied by the callee)
TextGenerator = Callable[[list[str]], list[str]]


@dataclass
class SourceContext:
    data: DataConfig
    task: TaskConfig
    seed: int
    cache_dir: Path  # generated sources cache under cache_dir / "generated"
    generator: Optional[TextGenerator] = None
    # model name, max_new_tokens, ...: part of the cache key and recorded in the cache file
    generator_settings: dict = field(default_factory=dict)
    limit: Optional[int] = None  # rows wanted (generated sources generate only this many)
    prompts: Optional[list[Record]] = None  # generated sources: which prompts to answer


Loader = Callable[[SourceContext], list[Record]]

_LOADERS: dict[SourceName, Loader] = {}


def register_source(name: SourceName) -> Callable[[Loader], Loader]:
    """Decorator registering `fn` as the loader of `name` (one loader per name)."""
    if not isinstance(name, SourceName):
        raise TypeError(f"register_source expects a SourceName, got {name!r}")

    def decorate(fn: Loader) -> Loader:
        existing = _LOADERS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"source {name.value!r} is already registered by {existing.__module__}")
        _LOADERS[name] = fn
        return fn

    return decorate


def registered_sources() -> list[SourceName]:
    _ensure_loaders_imported()
    return sorted(_LOADERS, key=lambda n: n.value)


def _ensure_loaders_imported() -> None:
    # The family modules register themselves on import; the package __init__ imports all.
    import antibody.data.sources  # noqa: F401


def _as_source_name(name: SourceName | str) -> SourceName:
    if isinstance(name, SourceName):
        return name
    try:
        return SourceName(name)
    except ValueError:
        allowed = ", ".join(s.value for s in SourceName)
        raise ConfigError(f"unknown data source {name!r}; allowed: {allowed}") from None


def load_source(name: SourceName, ctx: SourceContext) -> list[Record]:
    """Load one source's Records and check the invariants every consumer relies on."""
    name = _as_source_name(name)
    _ensure_loaders_imported()
    loader = _LOADERS.get(name)
    if loader is None:
        raise ConfigError(f"data source {name.value!r} has no registered loader")
    records = loader(ctx)
    if not records:
        raise DataError(f"data source {name.value!r} produced no rows; check its files / data.paths")
    seen: set[str] = set()
    for rec in records:
        if rec.uid in seen:
            raise DataError(f"data source {name.value!r}: duplicate uid {rec.uid}")
        seen.add(rec.uid)
        if not rec.refusal:
            raise DataError(f"data source {name.value!r}: row {rec.uid} has no refusal view")
        if rec.source != name.value:
            raise DataError(f"data source {name.value!r}: row {rec.uid} is tagged source={rec.source!r}")
    return records
