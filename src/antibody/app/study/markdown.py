"""How a study's numbers are written in its Markdown tables (study.report, study.stress_table):
a rate in points as mean ± std over seeds, a paired difference with its t interval and
McNemar p per seed, and the names of the weight and detector keys. One place, so that every
table of a page writes the same number alike."""

from __future__ import annotations

from typing import Optional

from antibody.app.study.results import MeanStd, OverSeeds

SPREAD = "rows/harmful_at_least_half"  # share of harmful rows with weight x B >= 0.5


def pm(stat: Optional[MeanStd], scale: float = 100.0, digits: int = 1) -> str:
    if stat is None or stat.mean is None:
        return "-"
    if stat.std is None:
        return f"{scale * stat.mean:.{digits}f} (1 seed)"
    return f"{scale * stat.mean:.{digits}f} ± {scale * stat.std:.{digits}f}"


def paired_cells(p: OverSeeds) -> list[str]:
    """A comparison over seeds (`report.over_seeds`) as table cells: difference, t interval, p per seed."""
    ci = p.ci95
    return [pm(p.diff), "-" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]",
            ", ".join(f"{x:.2g}" for x in p.p_values)]


def weight_key_name(key: str) -> str:
    if key == SPREAD:
        return "harmful rows w x B >= 0.5"
    return key.split("/", 1)[1].removesuffix("_x_batch").replace("auroc_", "AUROC ")
