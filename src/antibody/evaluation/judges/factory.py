"""`build_judge`: the judge a config selects, from the registry, behind the gate if asked."""

from __future__ import annotations

from pathlib import Path

from antibody.config.errors import ConfigError
from antibody.config.schema import Config, JudgeKind
from antibody.evaluation.judges import beaver_dam, keyword, probe, tfidf  # noqa: F401  (registration)
from antibody.evaluation.judges.base import _REGISTRY, Judge
from antibody.evaluation.judges.gated import RefusalGatedJudge


def build_judge(kind: JudgeKind, cfg: Config, cache_dir: Path) -> Judge:
    """The judge selected by cfg.eval.judge (behind the refusal gate if
    cfg.eval.judge_refusal_gate); `cache_dir` holds trained judges (tfidf, probe)."""
    kind = JudgeKind(kind)
    if kind not in _REGISTRY:
        allowed = sorted(k.value for k in _REGISTRY)
        raise ConfigError(f"eval.judge={kind.value!r} has no implementation; allowed: {allowed}")
    judge = _REGISTRY[kind](cfg, Path(cache_dir))
    return RefusalGatedJudge(judge) if cfg.eval.judge_refusal_gate else judge
