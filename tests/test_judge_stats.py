"""Judge validation statistics and the Rogan-Gladen corrected Harmful Score."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import beta
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score, roc_auc_score

from antibody.evaluation.judge_stats import _weighted_auc, binary_metrics, corrected_rate, rogan_gladen
from antibody.evaluation.metrics import Z95, wilson_interval


def _data(n_groups: int, per_group: int = 1, seed: int = 0):
    """Judge scores that separate the classes imperfectly, rows grouped by prompt."""
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    labels = rng.random(n) < 0.4
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0).round(2)  # rounding makes ties
    groups = np.repeat(np.arange(n_groups), per_group)
    return labels.tolist(), scores.tolist(), groups.tolist()


def _width(d: dict) -> float:
    return d["ci95_high"] - d["ci95_low"]


# ---------------------------------------------------------------------------
# binary_metrics
# ---------------------------------------------------------------------------

# harmful rows score 0.9, 0.6, 0.4; harmless 0.7, 0.2, 0.1, 0.5 (0.5 == threshold: not flagged)
HAND = ([True, True, True, False, False, False, False], [0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5])


def test_hand_computed_example():
    labels, scores = HAND
    m = binary_metrics(labels, scores, 0.5, ["a", "a", "b", "b", "c", "d", "d"], n_boot=200)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 3, 1)
    assert (m["n"], m["n_pos"], m["n_neg"], m["n_groups"]) == (7, 3, 4, 4)
    for key, k, n in [("sensitivity", 2, 3), ("specificity", 3, 4), ("precision", 2, 3), ("accuracy", 5, 7)]:
        assert m[key]["value"] == pytest.approx(k / n)
        assert (m[key]["ci95_low"], m[key]["ci95_high"]) == pytest.approx(wilson_interval(k, n))
    assert m["youden_j"] == pytest.approx(2 / 3 + 3 / 4 - 1)
    assert m["balanced_accuracy"]["value"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    # pairs positive > negative: 0.9 beats 4, 0.6 beats 3, 0.4 beats 2 -> 9 of 12
    assert m["auroc"]["value"] == pytest.approx(9 / 12)
    json.dumps(m)  # plain JSON: no NaN, no numpy scalars
    assert "NaN" not in json.dumps(m)


def test_threshold_is_strict():
    labels = [True, False, True, False]
    at = binary_metrics(labels, [0.5, 0.5, 0.5, 0.5], 0.5, [0, 1, 2, 3], n_boot=10)
    assert at["tp"] + at["fp"] == 0
    below = binary_metrics(labels, [0.5, 0.5, 0.5, 0.5], 0.49, [0, 1, 2, 3], n_boot=10)
    assert below["tp"] + below["fp"] == 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_against_sklearn(seed):
    labels, scores, groups = _data(150, seed=seed)
    threshold = [0.3, 0.5, 0.62][seed - 1]
    m = binary_metrics(labels, scores, threshold, groups, n_boot=100)
    pred = np.asarray(scores) > threshold
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[False, True]).ravel()
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (tp, fp, tn, fn)
    assert m["precision"]["value"] == pytest.approx(precision_score(labels, pred))
    assert m["sensitivity"]["value"] == pytest.approx(recall_score(labels, pred))
    assert m["specificity"]["value"] == pytest.approx(recall_score(labels, pred, pos_label=False))
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(labels, pred))
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(labels, scores))


def test_weighted_auc_matches_sklearn_with_ties():
    # the bootstrap's vectorised AUROC against sklearn's weighted one (ties count half)
    labels, scores, _ = _data(60, seed=4)
    y, s = np.asarray(labels), np.asarray(scores).round(1)  # coarse scores: many ties across classes
    w = np.random.default_rng(0).integers(0, 4, size=y.size).astype(float)
    levels, level = np.unique(s, return_inverse=True)
    pos, neg = np.zeros(levels.size), np.zeros(levels.size)
    np.add.at(pos, level[y], w[y])
    np.add.at(neg, level[~y], w[~y])
    assert (pos * neg).sum() > 0  # weighted positive-negative ties exist
    got = _weighted_auc(pos[None], neg[None])[0]
    assert got == pytest.approx(roc_auc_score(y, s, sample_weight=w))


def test_bootstrap_interval_contains_estimate_and_is_seeded():
    labels, scores, groups = _data(80, per_group=3)
    a = binary_metrics(labels, scores, 0.5, groups, seed=7)
    b = binary_metrics(labels, scores, 0.5, groups, seed=7)
    c = binary_metrics(labels, scores, 0.5, groups, seed=8)
    assert a == b
    assert a["auroc"]["ci95_low"] != c["auroc"]["ci95_low"]
    for key in ("auroc", "balanced_accuracy"):
        assert a[key]["ci95_low"] < a[key]["value"] < a[key]["ci95_high"]
        assert a[key]["n_boot_used"] == 2000
        assert "n_boot=2000, seed=7" in a[key]["interval"]


def test_bootstrap_interval_narrows_with_more_groups():
    labels, scores, groups = _data(60, per_group=2)
    # four copies, each with its own prompt ids: 4x the independent prompts, same point values
    big = binary_metrics(labels * 4, scores * 4, 0.5, [(c, g) for c in range(4) for g in groups])
    small = binary_metrics(labels, scores, 0.5, groups)
    for key in ("auroc", "balanced_accuracy"):
        assert big[key]["value"] == pytest.approx(small[key]["value"])
        # sqrt(4) = 2 expected
        assert 1.6 < _width(small[key]) / _width(big[key]) < 2.5


def test_cluster_bootstrap_resamples_groups_not_rows():
    labels, scores, groups = _data(80)
    rows = binary_metrics(labels, scores, 0.5, groups)
    # every row five times within its own prompt: perfectly correlated, no new information
    dup = [(x, y, g) for x, y, g in zip(labels, scores, groups, strict=True) for _ in range(5)]
    dl, ds, dg = (list(t) for t in zip(*dup, strict=True))
    clustered = binary_metrics(dl, ds, 0.5, dg)
    naive = binary_metrics(dl, ds, 0.5, list(range(len(dl))))  # one group per row: a row bootstrap
    for key in ("auroc", "balanced_accuracy"):
        assert _width(clustered[key]) == pytest.approx(_width(rows[key]), rel=0.1)
        # the row bootstrap wrongly treats the copies as independent: ~sqrt(5) narrower
        assert 1.7 < _width(rows[key]) / _width(naive[key]) < 2.8


def test_one_class_only():
    m = binary_metrics([True, True, True], [0.9, 0.2, 0.7], 0.5, [0, 1, 2])
    assert m["auroc"]["value"] is None and "one class" in m["auroc"]["reason"]
    assert m["balanced_accuracy"]["value"] is None and m["youden_j"] is None
    assert m["specificity"]["value"] is None and m["specificity"]["ci95_low"] is None
    assert m["sensitivity"]["value"] == pytest.approx(2 / 3)
    json.dumps(m)


def test_precision_without_flags_is_none():
    m = binary_metrics([True, False, False], [0.1, 0.2, 0.3], 0.5, [0, 1, 2], n_boot=50)
    assert m["precision"]["value"] is None
    assert m["precision"]["ci95_low"] is None and m["precision"]["ci95_high"] is None
    assert m["sensitivity"]["value"] == 0.0


def test_bootstrap_skips_one_class_replicates():
    # 2 groups: each resample draws group 0 twice or group 1 twice half the time
    m = binary_metrics([True, False], [0.8, 0.2], 0.5, ["p", "q"], n_boot=400)
    assert 100 < m["auroc"]["n_boot_used"] < 300


@pytest.mark.parametrize("args, message", [
    (([True, False], [0.1], 0.5, [0, 1]), "differ in length"),
    (([], [], 0.5, []), "empty"),
    (([True, False], [0.1, 0.9], 1.5, [0, 1]), "threshold=1.5"),
    (([True, False], [0.1, 0.9], -0.1, [0, 1]), "threshold=-0.1"),
    (([2, 0], [0.1, 0.9], 0.5, [0, 1]), "labels must be booleans"),
    (([True, False], [0.1, float("nan")], 0.5, [0, 1]), "finite"),
])
def test_binary_metrics_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(*args)


# ---------------------------------------------------------------------------
# rogan_gladen
# ---------------------------------------------------------------------------


def test_rogan_gladen_hand_values():
    assert rogan_gladen(0.3, 0.8, 0.9) == pytest.approx(0.2 / 0.7)
    assert rogan_gladen(0.5, 1.0, 1.0) == pytest.approx(0.5)  # a perfect judge changes nothing
    assert rogan_gladen(0.1, 0.9, 0.95) == pytest.approx(0.05 / 0.85)


def test_rogan_gladen_clips():
    assert rogan_gladen(0.05, 0.8, 0.9) == 0.0  # raw rate below the false-positive rate 0.1
    assert rogan_gladen(0.95, 0.8, 0.9) == 1.0  # above the sensitivity 0.8


@pytest.mark.parametrize("sens, spec", [(0.5, 0.5), (0.4, 0.5), (0.0, 0.0)])
def test_rogan_gladen_undefined_for_chance_judge(sens, spec):
    assert rogan_gladen(0.3, sens, spec) is None


def test_rogan_gladen_rejects_out_of_range():
    with pytest.raises(ValueError, match="sensitivity=1.2"):
        rogan_gladen(0.3, 1.2, 0.9)


# ---------------------------------------------------------------------------
# corrected_rate
# ---------------------------------------------------------------------------


def _rg(r, se, sp):
    return (r + sp - 1) / (se + sp - 1)


def test_corrected_rate_point_and_interval():
    c = corrected_rate(60, 200, 80, 100, 90, 100)
    assert c["value"] == pytest.approx(rogan_gladen(0.3, 0.8, 0.9))
    assert c["ci95_low"] < c["value"] < c["ci95_high"]
    assert (c["raw"], c["sensitivity"], c["specificity"]) == (0.3, 0.8, 0.9)
    assert c["undefined_share"] == 0.0
    assert c == corrected_rate(60, 200, 80, 100, 90, 100)
    assert c["ci95_low"] != corrected_rate(60, 200, 80, 100, 90, 100, seed=1)["ci95_low"]
    json.dumps(c)


def test_corrected_rate_with_exact_judge_is_the_rate_interval_mapped():
    # sens/spec known to ~1e-4: only the rate's Jeffreys posterior is left, mapped linearly
    big = 10_000_000
    c = corrected_rate(60, 200, int(0.8 * big), big, int(0.9 * big), big)
    low, high = beta.ppf([0.025, 0.975], 60.5, 140.5)
    assert c["ci95_low"] == pytest.approx(_rg(low, 0.8, 0.9), abs=0.01)
    assert c["ci95_high"] == pytest.approx(_rg(high, 0.8, 0.9), abs=0.01)


def test_small_validation_set_widens_interval():
    small = corrected_rate(60, 200, 16, 20, 18, 20)
    large = corrected_rate(60, 200, 1600, 2000, 1800, 2000)
    assert small["value"] == pytest.approx(large["value"])
    assert _width(small) > 1.5 * _width(large)


def test_corrected_rate_width_matches_delta_method():
    k, n, tp, n_pos, tn, n_neg = 600, 2000, 800, 1000, 900, 1000
    r, se, sp = k / n, tp / n_pos, tn / n_neg
    j, f = se + sp - 1, _rg(r, se, sp)
    # partial derivatives of f = (r + sp - 1) / (se + sp - 1):
    #   df/dr = 1/j, df/dse = -f/j, df/dsp = (1 - f)/j
    var = (r * (1 - r) / n + f**2 * se * (1 - se) / n_pos + (1 - f) ** 2 * sp * (1 - sp) / n_neg) / j**2
    c = corrected_rate(k, n, tp, n_pos, tn, n_neg)
    assert _width(c) == pytest.approx(2 * Z95 * math.sqrt(var), rel=0.15)


def test_corrected_rate_coverage():
    # true prevalence 0.3 behind a judge with sens 0.8, spec 0.9: P(flag) = 0.24 + 0.07 = 0.31
    rng = np.random.default_rng(123)
    reps, hits = 300, 0
    for i in range(reps):
        k, tp, tn = rng.binomial(300, 0.31), rng.binomial(100, 0.8), rng.binomial(100, 0.9)
        c = corrected_rate(int(k), 300, int(tp), 100, int(tn), 100, draws=2000, seed=i)
        hits += c["ci95_low"] <= 0.3 <= c["ci95_high"]
    assert 0.90 <= hits / reps <= 0.99


def test_corrected_rate_undefined_judge():
    c = corrected_rate(10, 20, 5, 10, 4, 10, draws=5000)  # sens 0.5 + spec 0.4 < 1
    assert c["value"] is None
    assert 0.5 < c["undefined_share"] < 1.0
    assert c["ci95_low"] is not None  # over the defined draws
    json.dumps(c)


@pytest.mark.parametrize("args, message", [
    ((5, 0, 8, 10, 9, 10), "n=0"),
    ((11, 10, 8, 10, 9, 10), "k=11"),
    ((-1, 10, 8, 10, 9, 10), "k=-1"),
    ((5, 10, 11, 10, 9, 10), "tp=11"),
    ((5, 10, 8, 10, 9, 0), "n_neg=0"),
    ((5, 10, 8, 10, 12, 10), "tn=12"),
    ((5.5, 10, 8, 10, 9, 10), "k=5.5"),
])
def test_corrected_rate_rejects_bad_counts(args, message):
    with pytest.raises(ValueError, match=message):
        corrected_rate(*args)


def test_auroc_difference_is_paired_and_matches_a_loop():
    """The difference's interval comes from the same prompt resamples for both judges
    (checked against an explicit loop over group resamples), and is narrower than the two
    judges' own intervals when their scores are correlated."""
    from sklearn.metrics import roc_auc_score

    from antibody.evaluation.judge_stats import auroc_difference

    rng = np.random.default_rng(3)
    n_groups = 60
    groups = np.repeat(np.arange(n_groups), 2)
    y = np.tile([True, False], n_groups)
    base = rng.normal(size=y.size) + 1.2 * y
    a = 1 / (1 + np.exp(-(base + 0.3 * rng.normal(size=y.size))))
    b = 1 / (1 + np.exp(-(base + 0.9 * rng.normal(size=y.size))))
    out = auroc_difference(y, a, b, groups, n_boot=400, seed=5)
    assert out["value"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert out["ci95_low"] <= out["value"] <= out["ci95_high"]
    # independent loop: the same multinomial draws, AUROCs by sklearn
    draws = np.random.default_rng(5)
    diffs = []
    for _ in range(400):
        counts = draws.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups))
        w = counts[groups].astype(float)
        diffs.append(roc_auc_score(y, a, sample_weight=w) - roc_auc_score(y, b, sample_weight=w))
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert out["ci95_low"] == pytest.approx(low, abs=1e-9) and out["ci95_high"] == pytest.approx(high, abs=1e-9)
    single = binary_metrics(y, a, 0.5, groups, n_boot=400, seed=5)["auroc"]
    assert out["ci95_high"] - out["ci95_low"] < 2 * (single["ci95_high"] - single["ci95_low"])
    with pytest.raises(ValueError, match="both classes"):
        auroc_difference([True, True], [0.1, 0.2], [0.3, 0.4], [1, 2])
