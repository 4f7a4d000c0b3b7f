"""The stress study's plot (`heatmap.png` beside results.json, for a study with an `attack`
axis): defence rows x attacks, each cell coloured by the row's mean HS under the attack on a
fixed 0-100% scale (so two studies' maps compare by eye) with the mean ± std over seeds
written in it. Each row's worst attack is boxed in a solid line, its utility-bounded worst in
a dashed one where that is another attack, and an attack the FA bound leaves out carries a
dagger: the reader sees at a glance which attack breaks which defence, and which wins only by
breaking the task.

Drawn on the Agg canvas directly, as study.tradeoff does: nothing global to close, and the
tests read the drawn artists back by their gid (`cell|<row>|<attack>`, `worst|<row>`,
`bounded|<row>`).
"""

from __future__ import annotations

from pathlib import Path

from antibody.app.study.results import StudyResults
from antibody.app.study.stress import StressRow, StressSummary

DAGGER = "†"


def row_label(stress: StressSummary, row: StressRow) -> str:
    """The row's name, with the other axes' values when the study has any."""
    extra = ", ".join(f"{a.rsplit('.', 1)[-1]}={row.axes.get(a)}" for a in stress.axes)
    return row.row + (f" ({extra})" if extra else "")


def draw_heatmap(stress: StressSummary, study: str):
    """The heat map as a Figure, or None when no cell has an HS yet."""
    import matplotlib
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows, attacks = stress.rows, stress.attacks
    grid = np.full((len(rows), len(attacks)), np.nan)
    for i, r in enumerate(rows):
        for j, attack in enumerate(attacks):
            a = r.get(attack)
            if a is not None and a.hs.mean is not None:
                grid[i, j] = 100.0 * a.hs.mean
    if np.isnan(grid).all():
        return None
    fig = Figure(figsize=(1.15 * len(attacks) + 4.0, 0.6 * len(rows) + 2.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Reds"].with_extremes(bad="0.88")  # grey: not evaluated yet
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=100.0, aspect="auto")
    for i, r in enumerate(rows):
        label = row_label(stress, r)
        for j, attack in enumerate(attacks):
            a = r.get(attack)
            if np.isnan(grid[i, j]) or a is None:
                text = "-"
            else:
                std = "" if a.hs.std is None else f"\n± {100.0 * a.hs.std:.1f}"
                text = f"{grid[i, j]:.1f}{DAGGER if a.within_margin is False else ''}{std}"
            dark = not np.isnan(grid[i, j]) and grid[i, j] > 60.0  # white text on the darkest reds
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black",
                    gid=f"cell|{label}|{attack}")
        for kind, attack, style in (("worst", r.worst, "-"), ("bounded", r.bounded_worst, "--")):
            if attack is None or (kind == "bounded" and attack == r.worst):
                continue
            j = attacks.index(attack)
            ax.add_patch(Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, lw=1.8, ls=style, ec="black",
                                   gid=f"{kind}|{label}"))
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [row_label(stress, r) for r in rows], fontsize=8)
    ax.set_xlabel("attack (conf/attack/)")
    fig.colorbar(image, ax=ax, label="Harmful Score, HS (%): mean over seeds", shrink=0.9)
    margin = 100.0 * stress.margin
    fig.suptitle(f"study {study}: HS of each defence under each attack (mean ± std over seeds)\n"
                 "solid box: the row's worst attack; dashed: its worst over the attacks with FA\n"
                 f"at most {margin:.1f} points below its FA under benign, where that differs; "
                 f"{DAGGER}: FA more than {margin:.1f} points below", fontsize=8)
    return fig


def write_heatmap(results: StudyResults, path: Path) -> bool:
    """heatmap.png for a study with an `attack` axis; False, and a stale file removed, otherwise."""
    from antibody.app.study.tradeoff import save

    stress = None if results.stress is None else StressSummary.from_json(results.stress)
    return save(None if stress is None else draw_heatmap(stress, results.study), path)
