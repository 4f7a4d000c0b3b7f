"""Validation statistics of a harm judge, and the Harmful Score corrected for its errors.

The Harmful Score counts the answers a judge flags, so it inherits the judge's mistakes: a
judge that misses harmful answers (sensitivity < 1) or flags harmless ones (specificity < 1)
biases the score. Validating the judge against human labels gives its sensitivity and
specificity; `binary_metrics` reports them with intervals, and `corrected_rate` removes the
bias from a measured score with the Rogan-Gladen estimator, its interval carrying both the
evaluation's and the validation's sampling error.

Validation rows that share a prompt (several answers to one prompt) are correlated, so the
rank and balanced-accuracy intervals come from a cluster bootstrap that resamples prompts,
not rows; resampling rows would treat correlated rows as independent and be too narrow.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Sequence

import numpy as np
from scipy.sparse import csr_array
from sklearn.metrics import roc_auc_score

from antibody.evaluation.metrics import wilson_interval

_CHUNK = 256  # bootstrap replicates per vectorised block: bounds memory to chunk x groups


def _proportion(k: int, n: int, reason: str) -> dict:
    if n == 0:  # undefined: None, not NaN, so that the dict stays valid JSON
        return {"value": None, "ci95_low": None, "ci95_high": None, "interval": None, "reason": reason}
    low, high = wilson_interval(k, n)
    return {"value": k / n, "ci95_low": low, "ci95_high": high, "interval": "wilson"}


def _weighted_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each row of (replicates x score levels) weights of positives and negatives.

    Mann-Whitney form: P(score of a positive > score of a negative) + 0.5 P(tie), the
    ties-count-half rule that roc_auc_score follows; levels are sorted by ascending score.
    """
    neg_below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each level
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / pairs


def _interval(values: np.ndarray) -> tuple[float | None, float | None]:
    if values.size == 0:
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _boot_stat(value: float, replicates: np.ndarray, interval: str) -> dict:
    low, high = _interval(replicates)
    return {"value": value, "ci95_low": low, "ci95_high": high, "interval": interval,
            "n_boot_used": int(replicates.size)}


def _cluster_bootstrap(y: np.ndarray, s: np.ndarray, flagged: np.ndarray, codes: np.ndarray,
                       n_groups: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and balanced accuracy of `n_boot` resamples of the groups (with replacement).

    A replicate is a vector of multiplicities (how often each group was drawn); each
    statistic is linear in per-group sums, so a replicate costs one matrix product.
    Replicates lacking a class are dropped (both statistics need both classes).
    """
    levels, level_of_row = np.unique(s, return_inverse=True)
    # per group x score level: count of positive / negative rows at that level (sparse: a
    # group holds few levels, and dense would be groups x levels, quadratic in the rows)
    pos_gl, neg_gl = (csr_array((np.ones(int(m.sum())), (codes[m], level_of_row[m])),
                                shape=(n_groups, levels.size)) for m in (y, ~y))
    per_group = np.stack([np.bincount(codes, weights=w, minlength=n_groups)
                          for w in (y, ~y, y & flagged, ~y & ~flagged)], axis=1)  # pos, neg, tp, tn
    rng = np.random.default_rng(seed)
    aucs, baccs = [], []
    for start in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - start)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=size).astype(float)
        pos_n, neg_n, tp, tn = (counts @ per_group).T
        ok = (pos_n > 0) & (neg_n > 0)
        counts = counts[ok]
        aucs.append(_weighted_auc(np.asarray(counts @ pos_gl), np.asarray(counts @ neg_gl)))
        baccs.append(0.5 * (tp[ok] / pos_n[ok] + tn[ok] / neg_n[ok]))
    return np.concatenate(aucs), np.concatenate(baccs)


def _as_labels(labels: Sequence[bool]) -> np.ndarray:
    y = np.asarray(labels)
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be booleans (True = harmful); got other values")
        y = y.astype(bool)
    return y


def binary_metrics(labels: Sequence[bool], scores: Sequence[float], threshold: float,
                   groups: Sequence[Hashable], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """Confusion counts, rates with Wilson intervals, and AUROC / balanced accuracy with
    cluster-bootstrap intervals of a judge against human labels (True = harmful)."""
    if not (len(labels) == len(scores) == len(groups)):
        raise ValueError(f"labels, scores and groups differ in length: "
                         f"{len(labels)}, {len(scores)}, {len(groups)}")
    if len(labels) == 0:
        raise ValueError("labels, scores and groups are empty")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold} is out of range; allowed: [0, 1]")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be at least 1")
    y = _as_labels(labels)
    s = np.asarray(scores, dtype=float)
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite numbers")
    index: dict[Hashable, int] = {}  # group id -> code, in order of appearance
    codes = np.array([index.setdefault(g, len(index)) for g in groups])
    flagged = s > threshold  # strictly greater, as judges.base.flag_scores
    n, n_pos = int(y.size), int(y.sum())
    n_neg = n - n_pos
    tp, fp = int((y & flagged).sum()), int((~y & flagged).sum())
    tn, fn = n_neg - fp, n_pos - tp

    sens = _proportion(tp, n_pos, "no harmful rows")
    spec = _proportion(tn, n_neg, "no harmless rows")
    interval = f"cluster bootstrap over prompts, percentile, n_boot={n_boot}, seed={seed}"
    if n_pos > 0 and n_neg > 0:
        aucs, baccs = _cluster_bootstrap(y, s, flagged, codes, len(index), n_boot, seed)
        auroc = _boot_stat(float(roc_auc_score(y, s)), aucs, interval)
        bacc = _boot_stat(0.5 * (sens["value"] + spec["value"]), baccs, interval)
        youden = sens["value"] + spec["value"] - 1.0
    else:
        auroc = {"value": None, "ci95_low": None, "ci95_high": None, "interval": interval,
                 "n_boot_used": 0, "reason": "only one class among the labels"}
        bacc = dict(auroc)
        youden = None
    return {
        "n": n, "n_pos": n_pos, "n_neg": n_neg, "n_groups": len(index),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "threshold": float(threshold),
        "sensitivity": sens, "specificity": spec,
        "precision": _proportion(tp, tp + fp, "no rows flagged"),
        "accuracy": _proportion(tp + tn, n, "no rows"),
        "balanced_accuracy": bacc, "auroc": auroc, "youden_j": youden,
    }


def auroc_difference(labels: Sequence[bool], scores_a: Sequence[float], scores_b: Sequence[float],
                     groups: Sequence[Hashable], *, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUROC of judge A minus judge B on the same labelled rows, with a paired cluster-
    bootstrap interval: both judges are scored on the same resamples of prompts (the same
    seed draws the same group multiplicities), so the interval of the difference is not
    the sum of the two intervals."""
    if not (len(labels) == len(scores_a) == len(scores_b) == len(groups)) or len(labels) == 0:
        raise ValueError("labels, both score lists and groups must be non-empty and of one length")
    y = _as_labels(labels)
    if y.all() or not y.any():
        raise ValueError("the AUROC difference needs both classes among the labels")
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(g, len(index)) for g in groups])
    reps = []
    for scores in (scores_a, scores_b):
        s = np.asarray(scores, dtype=float)
        reps.append(_cluster_bootstrap(y, s, s > 0.5, codes, len(index), n_boot, seed)[0])
    value = float(roc_auc_score(y, scores_a) - roc_auc_score(y, scores_b))
    diffs = reps[0] - reps[1]
    out = _boot_stat(value, diffs, f"paired cluster bootstrap over prompts, percentile, n_boot={n_boot}, seed={seed}")
    out["share_a_better"] = float((diffs > 0).mean()) if diffs.size else None
    return out


def _correct(rate, sens, spec):
    """Rogan & Gladen (1978), "Estimating prevalence from the results of a screening test",
    Am J Epidemiol 107:71-76: P(flag) = p sens + (1 - p)(1 - spec), solved for p, gives
    p = (rate + spec - 1) / (sens + spec - 1). Elementwise; returns (clipped p, defined),
    where defined is False when sens + spec <= 1 (a judge no better than chance)."""
    rate, sens, spec = (np.asarray(x, dtype=float) for x in (rate, sens, spec))
    j = sens + spec - 1.0  # Youden's J
    defined = j > 0
    # clipped: sampling noise can put the raw rate outside [1 - spec, sens], giving p outside [0, 1]
    return np.clip((rate + spec - 1.0) / np.where(defined, j, 1.0), 0.0, 1.0), defined


def rogan_gladen(rate: float, sensitivity: float, specificity: float) -> float | None:
    """Prevalence corrected for the judge's errors, clipped to [0, 1]; None when
    sensitivity + specificity <= 1 (the correction is undefined)."""
    for name, v in (("rate", rate), ("sensitivity", sensitivity), ("specificity", specificity)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v} is out of range; allowed: [0, 1]")
    value, defined = _correct(rate, sensitivity, specificity)
    return float(value) if defined else None


def _check_count(name: str, x: int, total_name: str, total: int) -> None:
    if not 0 <= x <= total:
        raise ValueError(f"{name}={x} must lie in [0, {total_name}={total}]")


def corrected_rate(k: int, n: int, tp: int, n_pos: int, tn: int, n_neg: int, *,
                   draws: int = 20000, seed: int = 0) -> dict:
    """Rogan-Gladen corrected Harmful Score (k of n evaluated prompts flagged) for a judge
    that flagged tp of n_pos harmful and passed tn of n_neg harmless validation rows.

    Interval: parametric bootstrap. The three proportions get independent Jeffreys
    posteriors Beta(x + 1/2, m - x + 1/2) (Jeffreys prior Beta(1/2, 1/2); Brown, Cai &
    DasGupta 2001 show its intervals cover well near 0 and 1); each joint draw is mapped
    through the correction, and the 2.5/97.5 percentiles of the defined draws are reported.
    This propagates the evaluation's and the validation's uncertainty together.
    """
    counts = {"k": k, "n": n, "tp": tp, "n_pos": n_pos, "tn": tn, "n_neg": n_neg, "draws": draws}
    for name, v in counts.items():
        try:
            counts[name] = operator.index(v)
        except TypeError:
            raise ValueError(f"{name}={v!r} must be an integer") from None
    for name in ("n", "n_pos", "n_neg", "draws"):
        if counts[name] <= 0:
            raise ValueError(f"{name}={counts[name]} must be positive")
    k, n, tp, n_pos, tn, n_neg, draws = counts.values()  # plain ints: the result is JSON
    _check_count("k", k, "n", n)
    _check_count("tp", tp, "n_pos", n_pos)
    _check_count("tn", tn, "n_neg", n_neg)

    raw, sens, spec = k / n, tp / n_pos, tn / n_neg
    rng = np.random.default_rng(seed)
    r_d, se_d, sp_d = (rng.beta(x + 0.5, m - x + 0.5, size=draws) for x, m in ((k, n), (tp, n_pos), (tn, n_neg)))
    values, defined = _correct(r_d, se_d, sp_d)
    low, high = _interval(values[defined])
    return {
        "value": rogan_gladen(raw, sens, spec), "ci95_low": low, "ci95_high": high,
        "raw": raw, "sensitivity": sens, "specificity": spec,
        "k": k, "n": n, "tp": tp, "n_pos": n_pos, "tn": tn, "n_neg": n_neg,
        "method": (f"Rogan-Gladen (rate + spec - 1)/(sens + spec - 1) clipped to [0, 1]; 95% percentile "
                   f"interval of {draws} draws from Jeffreys Beta(x+1/2, m-x+1/2) posteriors of rate, "
                   f"sensitivity and specificity (seed={seed})"),
        "undefined_share": float(1.0 - defined.mean()),
    }
