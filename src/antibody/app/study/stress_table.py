"""The stress section of a study's table (study.stress's results as Markdown): every
defence under every attack, each defence's worst and utility-bounded worst case, and the
detector AUROCs per attack. Part of `report.study_table`, so it reaches table.md and, through
`python -m antibody report`, the study's results page."""

from __future__ import annotations

from typing import Optional

from antibody.app.study.markdown import paired_cells, pm, weight_key_name
from antibody.app.study.results import OverSeeds
from antibody.app.study.stress import BENIGN, AttackResult, StressRow, StressSummary


def _ci(ci: Optional[tuple[float, float]]) -> str:
    return "-" if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _diff(p: Optional[OverSeeds], reference: bool) -> list[str]:
    """A paired difference to the reference as (mean ± std, t interval) cells."""
    if reference:
        return ["reference", "-"]
    return ["-", "-"] if p is None else paired_cells(p)[:2]


def _head(s: StressSummary) -> str:
    return "| row | " + "".join(f"{a} | " for a in s.axes)


def _axes(s: StressSummary, r: StressRow) -> list[str]:
    return [str(r.axes.get(a)) for a in s.axes]


def _sizes(a: AttackResult) -> str:
    return " / ".join(str(a.n.get(k, "-")) for k in ("harmful/harmful_score", "FA"))


def _bound(a: AttackResult, margin: float) -> str:
    return "-" if a.within_margin is None else "yes" if a.within_margin else f"**no** (> {100 * margin:.1f} points below)"


def attacks_table(s: StressSummary) -> str:
    ref = s.reference or "(no reference row)"
    lines = [f"Stress test: every defence under every attack of the study (`attack` axis, conf/attack/). Rates in "
             f"%, mean ± sample std over seeds; HS's two-sided 95% t interval over seeds; HS − `{ref}`: the paired "
             f"HS difference to `{ref}` under the same attack, on the same prompts seed by seed (mean ± std over "
             "seeds and its 95% t interval; the exact McNemar p of each seed is in the paired table above). "
             f"FA bound: the row's mean FA at most {100 * s.margin:.1f} points below its own FA under `{BENIGN}` "
             "(study file: `utility_margin`).", "",
             _head(s) + f"attack | seeds | HS | HS 95% t interval | FA | HS − `{ref}` | 95% t interval | "
             "FA bound | n (harmful / task) |",
             "|---|" + "---|" * (len(s.axes) + 9)]
    for r in s.rows:
        for a in r.attacks:
            cells = [r.row, *_axes(s, r), a.attack, str(a.hs.seeds), pm(a.hs), _ci(a.hs_ci95), pm(a.fa),
                     *_diff(a.paired, r.row == ref), _bound(a, s.margin), _sizes(a)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _case(r: StressRow, attack: Optional[str], ref: Optional[str]) -> list[str]:
    """The cells of one worst case: attack, HS [interval], FA, difference to the reference."""
    a = r.get(attack)
    if a is None:
        return ["-", "-", "-", "-"]
    diff = _diff(a.paired, r.row == ref)
    ci = "" if a.hs_ci95 is None else f" {_ci(a.hs_ci95)}"  # one seed: no interval
    return [f"`{a.attack}`", f"{pm(a.hs)}{ci}", pm(a.fa),
            diff[0] if diff[1] == "-" else f"{diff[0]} {diff[1]}"]


def worst_table(s: StressSummary) -> str:
    ref = s.reference or "(no reference row)"
    lines = [f"Each defence's worst case over the attacks (the highest mean HS) and its utility-bounded worst case "
             f"(the highest mean HS over the attacks whose mean FA is at most {100 * s.margin:.1f} points below the "
             f"same row's FA under `{BENIGN}`, so that an attack which breaks the task does not count as held), in %: "
             f"HS mean ± std over seeds [95% t interval over seeds], FA, and the paired HS difference to `{ref}` "
             "under that same attack [95% t interval over seeds].", "",
             _head(s) + f"worst attack | HS | FA | HS − `{ref}` | bounded worst attack | HS | FA | HS − `{ref}` | "
             "left out by the FA bound |",
             "|---|" + "---|" * (len(s.axes) + 9)]
    notes = []
    for r in s.rows:
        left = ", ".join(f"`{x}`" for x in r.excluded) or "none"
        if r.get(BENIGN) is None:
            left = f"no `{BENIGN}` cell: no bound"
        cells = [r.row, *_axes(s, r), *_case(r, r.worst, ref), *_case(r, r.bounded_worst, ref), left]
        lines.append("| " + " | ".join(cells) + " |")
        done = sum(a.hs.mean is not None for a in r.attacks)
        if done < len(s.attacks):
            notes.append(f"`{r.row}`" + "".join(f" {v}" for v in _axes(s, r)) + f": {done} of {len(s.attacks)}")
    if notes:
        lines += ["", "Worst cases over the attacks evaluated so far only: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def detector_table(s: StressSummary) -> str:
    """Per attack and row, each detector AUROC recorded (empty when no run recorded one)."""
    keys = sorted({k for r in s.rows for a in r.attacks for k in a.detector})
    if not keys:
        return ""
    lines = ["Can the weighting see each attack? Each score the fine-tuning runs recorded as a detector of the "
             "upload's harmful rows (AUROC over the rows trained on: 0.5 = chance, below 0.5 = the score takes the "
             "harmful rows for the safer ones), mean ± std over seeds. These are the scores a provider's screen "
             "computes before training (`python -m antibody screen`, methods/scoring.py).", "",
             "| attack | row | " + "".join(f"{a} | " for a in s.axes)
             + " | ".join(weight_key_name(k) for k in keys) + " |",
             "|---|---|" + "---|" * (len(s.axes) + len(keys))]
    blind = []
    for attack in s.attacks:
        found = [(r, a) for r in s.rows if (a := r.get(attack)) is not None and a.detector]
        if not found and any(r.get(attack) is not None for r in s.rows):
            blind.append(f"`{attack}`")
        for r, a in found:
            cells = [attack, r.row, *_axes(s, r), *(pm(a.detector.get(k), scale=1.0, digits=2) for k in keys)]
            lines.append("| " + " | ".join(cells) + " |")
    if blind:
        lines += ["", f"No AUROC under {', '.join(blind)}: a run records one only when its upload holds both harmful "
                  "and other rows (`benign` and `identity_shift` upload no harmful row, `harmful_only` nothing else)."]
    return "\n".join(lines)


def stress_table(stress: dict) -> str:
    """The whole stress section from results.json's `stress`."""
    s = StressSummary.from_json(stress)
    parts = [attacks_table(s), worst_table(s), detector_table(s)]
    return "\n\n".join(p for p in parts if p)

