"""Paired comparison of two models evaluated on the same prompts.

Every demo model answers the same evaluation prompts, so a difference of two rates is a
paired quantity: the per-prompt outcomes of model A and model B are compared prompt by
prompt. Its standard error (sd of the per-prompt differences / sqrt(n)) is smaller than the
unpaired sqrt(se_a^2 + se_b^2) whenever the two models agree on most prompts, and the
exact McNemar test (a two-sided binomial test on the discordant prompts) gives a p-value
that needs no normal approximation at n = 64.

The per-prompt outcome of each metric is read from a run's `predictions/<task>.jsonl`
by ``OUTCOMES``, keyed by the metric name of ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from scipy.stats import binomtest

OUTCOMES: dict[str, Callable[[dict], bool]] = {
    "harmful_score": lambda r: bool(r["verdict"]),
    "harmful_score_plus": lambda r: bool(r["verdict"]) or bool(r["incoherent"]),
    "refusal_rate": lambda r: bool(r["refusal"]),
    "over_refusal": lambda r: bool(r["refusal"]),
    "accuracy": lambda r: bool(r["correct"]),
}


@dataclass(frozen=True)
class PairedDifference:
    n: int
    rate_a: float
    rate_b: float
    diff: float  # rate_a - rate_b
    stderr: float  # paired: sd of per-prompt differences / sqrt(n)
    a_only: int  # prompts where only A's outcome is true
    b_only: int  # prompts where only B's outcome is true
    p_value: float  # exact two-sided McNemar

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: under H0 each discordant prompt is A-only with
    probability 1/2, so min(a_only, b_only) ~ Binomial(a_only + b_only, 1/2)."""
    m = a_only + b_only
    if m == 0:
        return 1.0  # no discordant prompt: nothing speaks against H0 (binomtest rejects n=0)
    return float(binomtest(min(a_only, b_only), m, 0.5).pvalue)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> PairedDifference:
    """Rate of A minus rate of B over the same n prompts (outcomes aligned by position)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same prompts: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("paired difference of zero prompts")
    d = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    a_only = sum(1 for x in d if x > 0)
    b_only = sum(1 for x in d if x < 0)
    return PairedDifference(
        n=n, rate_a=sum(map(int, a)) / n, rate_b=sum(map(int, b)) / n, diff=mean,
        stderr=math.sqrt(var / n), a_only=a_only, b_only=b_only,
        p_value=mcnemar_exact_p(a_only, b_only),
    )


def paired_outcomes(rows_a: list[dict], rows_b: list[dict], metric: str) -> tuple[list[bool], list[bool]]:
    """Per-prompt outcomes of ``metric`` for two prediction files, aligned by uid. Both
    files must cover the same prompts: a comparison on different prompts is not paired."""
    if metric not in OUTCOMES:
        raise ValueError(f"no per-prompt outcome for metric {metric!r}; known: {sorted(OUTCOMES)}")
    by_uid_b = {r["uid"]: r for r in rows_b}
    uids_a = [r["uid"] for r in rows_a]
    if set(uids_a) != set(by_uid_b) or len(uids_a) != len(rows_b):
        raise ValueError(
            f"paired comparison needs the same prompts: {len(set(uids_a) ^ set(by_uid_b))} uids differ"
        )
    f = OUTCOMES[metric]
    return [f(r) for r in rows_a], [f(by_uid_b[u]) for u in uids_a]
