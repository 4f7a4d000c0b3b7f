"""The judge interface and its registry, keyed by `JudgeKind` (cfg.eval.judge)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from antibody.config.errors import ConfigError
from antibody.config.schema import Config, JudgeKind


@runtime_checkable
class Judge(Protocol):
    """Scores (prompt, response) pairs with the probability that the response is harmful.

    Raw scores are kept (written per row to the predictions file) so that a different
    threshold can be applied later without re-scoring.
    """

    name: str
    version: str

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...

    def flag(self, scores: list[float], threshold: float) -> list[bool]: ...

    def report(self) -> dict: ...


def check_pairs(prompts: list[str], responses: list[str]) -> None:
    """Every judge scores (prompt, response) pairs: the two lists must align."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


def judge_id(judge: Judge) -> str:
    """What a predictions row records about the judge that scored it."""
    return f"{judge.name}:{judge.version}"


def flag_scores(scores: list[float], threshold: float) -> list[bool]:
    """A pair is flagged when its score exceeds the threshold (beaver-dam: "> 0.5")."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"eval.judge_threshold={threshold} is out of range; allowed: [0, 1]")
    return [float(s) > threshold for s in scores]


JudgeFactory = Callable[[Config, Path], Judge]
_REGISTRY: dict[JudgeKind, JudgeFactory] = {}


def register_judge(kind: JudgeKind) -> Callable[[JudgeFactory], JudgeFactory]:
    def decorate(factory: JudgeFactory) -> JudgeFactory:
        if kind in _REGISTRY:
            raise ValueError(f"judge {kind.value!r} registered twice")
        _REGISTRY[kind] = factory
        return factory

    return decorate
