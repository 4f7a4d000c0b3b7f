"""Paired differences of two models on the same prompts, against independent computations."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from scipy.stats import binomtest

from antibody.evaluation.paired import mcnemar_exact_p, paired_difference, paired_outcomes


def test_paired_difference_matches_numpy_and_scipy():
    rng = random.Random(0)
    a = [rng.random() < 0.4 for _ in range(64)]
    b = [x if rng.random() < 0.7 else not x for x in a]  # correlated, as two related models are
    d = paired_difference(a, b)
    diffs = np.array(a, dtype=float) - np.array(b, dtype=float)
    assert d.n == 64
    assert math.isclose(d.diff, diffs.mean())
    assert math.isclose(d.stderr, diffs.std(ddof=1) / math.sqrt(64))
    assert math.isclose(d.rate_a - d.rate_b, d.diff)
    assert d.a_only == int((diffs > 0).sum()) and d.b_only == int((diffs < 0).sum())
    expected = binomtest(min(d.a_only, d.b_only), d.a_only + d.b_only, 0.5).pvalue
    assert math.isclose(d.p_value, expected, rel_tol=1e-9)
    # pairing helps when the models agree: the paired error is below the unpaired one
    unpaired = math.sqrt(d.rate_a * (1 - d.rate_a) / 64 + d.rate_b * (1 - d.rate_b) / 64)
    assert d.stderr < unpaired


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (0, 7), (3, 3), (10, 2), (1, 30)])
def test_mcnemar_exact_equals_binomial_test(a_only, b_only):
    expected = 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue
    assert math.isclose(mcnemar_exact_p(a_only, b_only), expected, rel_tol=1e-9)


@pytest.mark.parametrize("a_only,b_only", [(0, 7), (3, 3), (10, 2), (1, 30), (40, 25)])
def test_mcnemar_exact_equals_binomial_tail_sum(a_only, b_only):
    # written out, independent of the scipy call the module makes: twice the lower tail
    m, k = a_only + b_only, min(a_only, b_only)
    expected = min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)
    assert math.isclose(mcnemar_exact_p(a_only, b_only), expected, rel_tol=1e-9)


def test_identical_models_have_zero_difference_and_p_one():
    a = [True, False, True, True]
    d = paired_difference(a, a)
    assert d.diff == 0 and d.stderr == 0 and d.p_value == 1.0


def _rows(verdicts, uids):
    return [{"uid": u, "verdict": v, "incoherent": False, "refusal": not v, "correct": None}
            for u, v in zip(uids, verdicts, strict=True)]


def test_outcomes_are_aligned_by_uid_not_by_file_order():
    a = _rows([True, False, False], ["x", "y", "z"])
    b = _rows([False, False, True], ["z", "y", "x"])  # same prompts, other order
    oa, ob = paired_outcomes(a, b, "harmful_score")
    assert oa == [True, False, False] and ob == [True, False, False]
    assert paired_difference(oa, ob).diff == 0


def test_outcomes_refuse_different_prompts_and_unknown_metrics():
    a = _rows([True, False], ["x", "y"])
    with pytest.raises(ValueError, match="same prompts"):
        paired_outcomes(a, _rows([True, False], ["x", "w"]), "harmful_score")
    with pytest.raises(ValueError, match="no per-prompt outcome"):
        paired_outcomes(a, a, "bleu")
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference([True], [True, False])
