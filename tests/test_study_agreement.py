"""A study of one two-valued axis (the precision check): does the axis move each row's
difference to the reference? Checked against differences written out by hand."""

from __future__ import annotations

import statistics

import pytest

from antibody.app.study.agreement import agreement_table, agreements
from antibody.app.study.results import StudyResults

AXIS = "trainer.precision"
HS = "harmful/harmful_score"
# (row, precision, seed) -> (HS, FA)
VALUES = {
    ("ref", "32-true", 1): (0.50, 0.30), ("ref", "32-true", 2): (0.60, 0.32), ("ref", "32-true", 3): (0.55, 0.28),
    ("ref", "bf16-mixed", 1): (0.52, 0.30), ("ref", "bf16-mixed", 2): (0.58, 0.31), ("ref", "bf16-mixed", 3): (0.56, 0.29),
    ("new", "32-true", 1): (0.20, 0.30), ("new", "32-true", 2): (0.25, 0.30), ("new", "32-true", 3): (0.22, 0.27),
    ("new", "bf16-mixed", 1): (0.21, 0.31), ("new", "bf16-mixed", 2): (0.24, 0.30), ("new", "bf16-mixed", 3): (0.24, 0.28),
    # a row whose difference moves by +20 points in bf16 on every seed: it does not agree
    ("moved", "32-true", 1): (0.30, 0.30), ("moved", "32-true", 2): (0.31, 0.30), ("moved", "32-true", 3): (0.29, 0.30),
    ("moved", "bf16-mixed", 1): (0.52, 0.30), ("moved", "bf16-mixed", 2): (0.48, 0.30), ("moved", "bf16-mixed", 3): (0.51, 0.30),
}


def _results(values=VALUES, axes=(AXIS,)) -> StudyResults:
    cells = [{"row": r, AXIS: p, "seed": s, "job": f"{r}-{p}-{s}", "state": "evaluated",
              "metrics": {HS: hs, "FA": fa}} for (r, p, s), (hs, fa) in values.items()]
    cells.append({"row": "new", AXIS: "bf16-mixed", "seed": 4, "job": "pending", "state": "pending"})
    return StudyResults.from_json({"study": "precision", "axes": list(axes), "reference": "ref", "cells": cells})


def _by_hand(row: str, k: int) -> list[float]:
    out = []
    for s in (1, 2, 3):
        b, a = {r: VALUES[r, "bf16-mixed", s][k] for r in (row, "ref")}, {r: VALUES[r, "32-true", s][k] for r in (row, "ref")}
        out.append(b["ref"] - a["ref"] if row == "ref" else (b[row] - b["ref"]) - (a[row] - a["ref"]))
    return out


def test_each_rows_change_of_its_difference_to_the_reference():
    got = {(g.row, g.metric): g for g in agreements(_results())}
    assert set(got) == {(r, m) for r in ("ref", "new", "moved") for m in (HS, "FA")}
    for (row, metric), g in got.items():
        want = _by_hand(row, 0 if metric == HS else 1)
        assert g.deltas == pytest.approx(want) and g.stat.seeds == 3  # the pending seed 4 is left out
        assert g.stat.mean == pytest.approx(statistics.fmean(want))
    assert got["new", HS].agrees is True and got["moved", HS].agrees is False
    assert got["moved", "FA"].agrees is True  # its FA only moved as the reference's did


def test_the_table_and_when_there_is_none():
    table = agreement_table(_results())
    assert "| moved | HS | 3 | +20.0 ± " in table and "**no**" in table and "`ref` row shows its own change" in table
    two_axes = _results(axes=(AXIS, "data.user.p"))
    assert agreement_table(two_axes) == ""
    one_value = {k: v for k, v in VALUES.items() if k[1] == "32-true"}
    assert agreement_table(_results(one_value)) == ""
