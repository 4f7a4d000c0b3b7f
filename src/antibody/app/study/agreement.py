"""Does a setting change a study's conclusions? For a study with one axis of two values
(e.g. `trainer.precision: [32-true, bf16-mixed]`, conf/study/precision.yaml), each row's
difference to the reference row is computed seed by seed at both values, and the change
of that difference between the values is tested over seeds.

For row r, metric m (HS, FA) and seed s, with a and b the axis's two values:

    d_a(s) = m(r, a, s) - m(ref, a, s)        d_b(s) = m(r, b, s) - m(ref, b, s)
    delta(s) = d_b(s) - d_a(s)

Seeds are paired across the values (same seed: same data, batches and initial adapter), so
delta's mean ± sample std and two-sided 95% t interval over seeds say whether the setting
moved the comparison: it agrees when the interval holds 0. The reference row itself is
shown as its own shift, m(ref, b, s) - m(ref, a, s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from antibody.app.study.results import MeanStd, StudyResults

METRICS = (("harmful/harmful_score", "HS"), ("FA", "FA"))


@dataclass
class Agreement:
    row: str
    metric: str  # a cell metric key
    deltas: list[float]  # per seed, in seed order
    ci95: Optional[tuple[float, float]]

    @property
    def stat(self) -> MeanStd:
        return MeanStd.of(self.deltas)

    @property
    def agrees(self) -> Optional[bool]:
        return None if self.ci95 is None else bool(self.ci95[0] <= 0.0 <= self.ci95[1])


def axis_values(results: StudyResults) -> Optional[tuple[str, object, object]]:
    """(axis, first value, second value) when the study has one axis with two values."""
    if len(results.axes) != 1:
        return None
    axis = results.axes[0]
    values = list(dict.fromkeys(c.value(axis) for c in results.cells))
    return (axis, values[0], values[1]) if len(values) == 2 else None


def agreements(results: StudyResults) -> list[Agreement]:
    """Per row and metric, the change between the axis's two values of the row's difference
    to the reference (the reference row: its own change), over the seeds evaluated at both."""
    from antibody.app.study.paper import t_interval

    found = axis_values(results)
    if found is None or not results.reference:
        return []
    axis, a, b = str(found[0]), str(found[1]), str(found[2])  # values as text: a value may be a list
    value = {(c.row, str(c.value(axis)), c.seed): c.metrics for c in results.evaluated}
    rows = list(dict.fromkeys(c.row for c in results.cells))
    ref = results.reference
    out = []
    for row in [ref, *(r for r in rows if r != ref)]:
        for key, _ in METRICS:
            deltas = []
            for seed in sorted({c.seed for c in results.cells}):
                got = {(r, v): value.get((r, v, seed), {}).get(key) for r in (row, ref) for v in (a, b)}
                if any(x is None for x in got.values()):  # a cell not evaluated (yet), or without the metric
                    continue
                if row == ref:
                    deltas.append(got[ref, b] - got[ref, a])
                else:
                    deltas.append((got[row, b] - got[ref, b]) - (got[row, a] - got[ref, a]))
            if deltas:
                out.append(Agreement(row, key, deltas, t_interval(deltas)))
    return out


def agreement_table(results: StudyResults) -> str:
    """The agreement test as Markdown (empty when the study is not of that shape)."""
    found = axis_values(results)
    rows = agreements(results)
    if found is None or not rows:
        return ""
    axis, a, b = found
    ref = results.reference
    names = dict(METRICS)
    lines = [f"Does `{axis}` change the comparisons? Per row, its difference to `{ref}` at `{b}` minus the same "
             f"difference at `{a}`, seed by seed (same seed: same data and initial adapter), in points: mean ± "
             f"std over seeds and the two-sided 95% t interval; the row agrees when the interval holds 0. The "
             f"`{ref}` row shows its own change from `{a}` to `{b}`.", "",
             "| row | metric | seeds | change (points) | 95% t interval | agrees |", "|---|---|---|---|---|---|"]
    for g in rows:
        s = g.stat
        change = "-" if s.mean is None else (f"{100 * s.mean:+.1f}" + ("" if s.std is None else f" ± {100 * s.std:.1f}"))
        ci = "-" if g.ci95 is None else f"[{100 * g.ci95[0]:+.1f}, {100 * g.ci95[1]:+.1f}]"
        agrees = "-" if g.agrees is None else ("yes" if g.agrees else "**no**")
        lines.append(f"| {g.row} | {names[g.metric]} | {s.seeds} | {change} | {ci} | {agrees} |")
    return "\n".join(lines)
