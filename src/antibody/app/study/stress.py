"""Each defence's worst case over the attacks of a study with an `attack` axis (issue 26).

A defence that holds against one attack may fall to another, so a stress study reports per
row (and per value of any other axis):

- every attack's HS and FA, mean ± sample std over seeds (the study summary's numbers), the
  95% t interval of HS over seeds, and the paired HS difference to the reference row under
  the SAME attack, seed by seed on the same prompts (`report.summarise`'s `paired`, not
  recomputed here);
- the worst case: the attack with the highest mean HS;
- the utility-bounded worst case: the worst over the attacks whose mean FA is at most
  `margin` below the same row's mean FA under the `benign` attack (StudyConfig.utility_margin).
  An attack that destroys the model's task ability leaves it harmless by accident, not by
  the defence, so it should not decide the comparison. The bound is one-sided: an attack that
  raises FA (e.g. `long`, more steps on the task) is kept. Without a `benign` cell the bound
  is unknown and no bounded worst case is named;
- per attack, each detector AUROC the fine-tuning runs recorded (`detector/*`, as
  `report.weights_and_detector` reads them): whether the weighting's scores, which a
  provider's screen computes too (methods/scoring.py), can tell the attack's harmful rows
  apart. An upload of one class (`benign`, `identity_shift`: no harmful row;
  `harmful_only`: nothing else) has no AUROC.

The section is written to results.json (`stress`) only for a study with an `attack` axis,
so every other study's results keep their layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from antibody.app.study.results import MeanStd, OverSeeds, StudyResults

AXIS = "attack"
BENIGN = "benign"  # the attack whose FA bounds the others' (conf/attack/benign.yaml)
HS, FA = "harmful/harmful_score", "FA"
DETECTOR = "detector/"


@dataclass
class AttackResult:
    """One row under one attack, over its evaluated seeds."""

    attack: str
    hs: MeanStd
    hs_ci95: Optional[tuple[float, float]]  # t interval of HS over seeds (None with one seed)
    fa: MeanStd
    n: dict[str, Optional[int]]  # prompts per metric, as in the summary
    # HS of this row - HS of the reference row under the same attack, seed by seed (None: the
    # reference row itself, or no seed evaluated for both)
    paired: Optional[OverSeeds]
    # mean FA at most the margin below the row's FA under `benign` (None: unknown)
    within_margin: Optional[bool]
    detector: dict[str, MeanStd] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"attack": self.attack, "hs": self.hs.to_json(),
                "hs_ci95": None if self.hs_ci95 is None else list(self.hs_ci95), "fa": self.fa.to_json(),
                "n": self.n, "paired": None if self.paired is None else self.paired.to_json(),
                "within_margin": self.within_margin, "detector": {k: v.to_json() for k, v in self.detector.items()}}

    @classmethod
    def from_json(cls, d: dict) -> AttackResult:
        ci = d.get("hs_ci95")
        return cls(d["attack"], MeanStd.from_json(d["hs"]), None if ci is None else (ci[0], ci[1]),
                   MeanStd.from_json(d["fa"]), dict(d.get("n") or {}),
                   None if d.get("paired") is None else OverSeeds.from_json(d["paired"]), d.get("within_margin"),
                   {k: MeanStd.from_json(v) for k, v in (d.get("detector") or {}).items()})


@dataclass
class StressRow:
    """One defence row (at one value of each other axis) under every attack, with its worst
    and utility-bounded worst attack (names of entries of `attacks`)."""

    row: str
    axes: dict[str, Any]  # the study's other axes
    attacks: list[AttackResult]
    worst: Optional[str]
    bounded_worst: Optional[str]

    def get(self, attack: Optional[str]) -> Optional[AttackResult]:
        return next((a for a in self.attacks if a.attack == attack), None)

    @property
    def excluded(self) -> list[str]:
        """The attacks the FA margin left out of the bounded worst case."""
        return [a.attack for a in self.attacks if a.within_margin is False]

    def to_json(self) -> dict:
        return {"row": self.row, **self.axes, "worst": self.worst, "bounded_worst": self.bounded_worst,
                "attacks": [a.to_json() for a in self.attacks]}

    @classmethod
    def from_json(cls, d: dict, axes: list[str]) -> StressRow:
        return cls(d["row"], {a: d.get(a) for a in axes}, [AttackResult.from_json(a) for a in d["attacks"]],
                   d.get("worst"), d.get("bounded_worst"))


@dataclass
class StressSummary:
    """results.json's `stress` section."""

    margin: float  # FA, as a fraction (0.05 = 5 points)
    reference: Optional[str]
    attacks: list[str]  # in the axis's order
    axes: list[str]  # the study's other axes
    rows: list[StressRow]

    def to_json(self) -> dict:
        return {"axis": AXIS, "benign": BENIGN, "margin": self.margin, "reference": self.reference,
                "attacks": self.attacks, "axes": self.axes, "rows": [r.to_json() for r in self.rows]}

    @classmethod
    def from_json(cls, d: dict) -> StressSummary:
        axes = list(d.get("axes") or [])
        return cls(float(d["margin"]), d.get("reference"), list(d["attacks"]), axes,
                   [StressRow.from_json(r, axes) for r in d.get("rows") or []])


def worst_attack(attacks: list[AttackResult]) -> Optional[AttackResult]:
    """The attack with the highest mean HS (the first in axis order on a tie); None when no
    attack has an HS yet."""
    scored = [a for a in attacks if a.hs.mean is not None]
    return max(scored, key=lambda a: a.hs.mean, default=None)


def within_margin(fa: MeanStd, benign_fa: Optional[MeanStd], margin: float) -> Optional[bool]:
    """Whether a mean FA is at most `margin` below the benign attack's (None: either unknown)."""
    if fa.mean is None or benign_fa is None or benign_fa.mean is None:
        return None
    return fa.mean >= benign_fa.mean - margin


def bounded_worst_attack(attacks: list[AttackResult]) -> Optional[AttackResult]:
    """The worst case over the attacks known to keep FA within the margin."""
    return worst_attack([a for a in attacks if a.within_margin])


def stress_summary(results: StudyResults, margin: float) -> Optional[StressSummary]:
    """The stress section of a summarised study (report.summarise ran), or None when the
    study has no `attack` axis."""
    from antibody.app.study.paper import t_interval

    if AXIS not in results.axes:
        return None
    other = [a for a in results.axes if a != AXIS]
    attacks = [str(a) for a in dict.fromkeys(c.value(AXIS) for c in results.cells)]

    def key(x, *extra) -> tuple:  # a row at the other axes' values (as text: a value may be a list)
        return (x.row, *(str(x.value(a)) for a in other), *extra)

    summary = {key(s, str(s.value(AXIS))): s for s in results.summary}
    paired = {key(p, str(p.value(AXIS))): p.over for p in results.paired}
    seeds: dict[tuple, list[float]] = {}  # per-seed HS, for its interval
    for c in results.evaluated:
        if c.metrics.get(HS) is not None:
            seeds.setdefault(key(c, str(c.value(AXIS))), []).append(c.metrics[HS])
    out = []
    for head in dict.fromkeys(key(c) for c in results.cells):
        entries = []
        for attack in attacks:
            s = summary.get((*head, attack))
            if s is None:  # no seed of this cell evaluated yet
                continue
            entries.append(AttackResult(
                attack, s.get(HS) or MeanStd(), t_interval(seeds.get((*head, attack), [])), s.get(FA) or MeanStd(),
                dict(s.n), paired.get((*head, attack)), None,
                {k: v for k, v in s.stats.items() if k.startswith(DETECTOR)}))
        benign = next((e.fa for e in entries if e.attack == BENIGN), None)
        for e in entries:
            e.within_margin = within_margin(e.fa, benign, margin)
        worst, bounded = worst_attack(entries), bounded_worst_attack(entries)
        out.append(StressRow(head[0], dict(zip(other, _values(results, head[0], head[1:], other), strict=True)),
                             entries, worst and worst.attack, bounded and bounded.attack))
    return StressSummary(margin, results.reference, attacks, other, out)


def _values(results: StudyResults, row: str, text: tuple, other: list[str]) -> list:
    """The other axes' values (as the cells hold them) of the row's group keyed by `text`."""
    cell = next(c for c in results.cells if c.row == row and tuple(str(c.value(a)) for a in other) == text)
    return [cell.value(a) for a in other]
