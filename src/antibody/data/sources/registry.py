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
    # data.harmful_answer_filter=judge: the judge (answer_filter.AnswerJudge) whose cached
    # verdicts decide which harmful answers stay; it scores uncached answers only while the
    # generator may write (prepare_data), so that setup() reads the cache alone
    answer_judge: Optional[object] = None
    # the answers each filter reason dropped, counted for the data summary (reason -> n)
    drops: Optional[dict] = None


Loader = Callable[[SourceContext], list[Record]]


@dataclass(frozen=True)
class SourceSpec:
    """How a source is loaded, and, for model-written sources, which prompts it answers.

    A model-written source answers prompts the DataModule reserves for it: either its own
    prompt list (`own_prompts`, e.g. the project's benign prose instructions) or the
    harmful requests of other sources (`prompt_sources`); the DataModule draws them like any
    other pool, so no caller needs to know a source by name.
    """

    loader: Loader
    own_prompts: Optional[Loader] = None
    prompt_sources: tuple[SourceName, ...] = ()

    @property
    def model_written(self) -> bool:
        return self.own_prompts is not None or bool(self.prompt_sources)


_SPECS: dict[SourceName, SourceSpec] = {}


def register_source(
    name: SourceName,
    *,
    own_prompts: Optional[Loader] = None,
    prompt_sources: tuple[SourceName, ...] = (),
) -> Callable[[Loader], Loader]:
    """Decorator registering `fn` as the loader of `name` (one loader per name).

    Family modules register on import; the package __init__ imports every family, and
    Python runs it before any of its submodules, this one included, can be imported.
    """
    if not isinstance(name, SourceName):
        raise TypeError(f"register_source expects a SourceName, got {name!r}")

    def decorate(fn: Loader) -> Loader:
        existing = _SPECS.get(name)
        if existing is not None and existing.loader is not fn:
            raise ValueError(f"source {name.value!r} is already registered by {existing.loader.__module__}")
        _SPECS[name] = SourceSpec(fn, own_prompts, tuple(prompt_sources))
        return fn

    return decorate


def registered_sources() -> list[SourceName]:
    return sorted(_SPECS, key=lambda n: n.value)


def source_spec(name: SourceName | str) -> SourceSpec:
    name = _as_source_name(name)
    spec = _SPECS.get(name)
    if spec is None:
        raise ConfigError(f"data source {name.value!r} has no registered loader")
    return spec


def model_written_sources() -> frozenset[SourceName]:
    return frozenset(n for n, spec in _SPECS.items() if spec.model_written)


def source_prompts(name: SourceName, ctx: SourceContext) -> list[Record]:
    """The prompt-only rows a source contributes to the DataModule's pools: a file-backed
    source's rows, or a model-written source's own prompt list (answered later)."""
    spec = source_spec(name)
    if spec.own_prompts is not None:
        return spec.own_prompts(ctx)
    if spec.prompt_sources:
        where = ", ".join(s.value for s in spec.prompt_sources)
        raise ConfigError(
            f"{name.value} has no prompt list of its own: it answers prompts reserved from [{where}]"
        )
    return load_source(name, ctx)


def _as_source_name(name: SourceName | str) -> SourceName:
    if isinstance(name, SourceName):
        return name
    try:
        return SourceName(name)
    except ValueError:
        allowed = ", ".join(s.value for s in SourceName)
        raise ConfigError(f"unknown data source {name!r}; allowed: {allowed}") from None


def load_source(name: SourceName, ctx: SourceContext, *, allow_empty: bool = False) -> list[Record]:
    """Load one source's Records and check the invariants every consumer relies on.
    `allow_empty`: a batch of model-written answers may lose every answer to its filter (the
    split builder then draws more prompts); any other empty source is an error."""
    name = _as_source_name(name)
    records = source_spec(name).loader(ctx)
    if not records and not allow_empty:
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
