"""The trade-off plot of harmful fine-tuning defences: Harmful Score (y) against Fine-tune
Accuracy (x), one colour per row: a defence must lower HS without costing the user's task,
and one that buys its low HS with a useless model is seen at a glance (lower right is better).

A study's rows (`study_tradeoff`, `tradeoff.png` beside results.json): each row's mean as a
filled marker with ± one sample std over seeds on both axes, every seed's own point as a
faint dot, and where the study file has `paper:`, the paper's (FA, HS) as a hollow marker
joined to ours by a dotted line. A demo suite's models (`models_tradeoff`): one point per
model, one seed, no error bars.

The figures are drawn on the Agg canvas directly (no pyplot): nothing global to close, and
the tests can read the drawn artists back from the returned Figure. Artists carry a gid
`<kind>|<row>` (kind: mean, xerr, yerr, seeds, paper, link) for the same reason.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from antibody.app.study.paper import _matches
from antibody.app.study.report import HS, _task_metric
from antibody.app.study.results import MeanStd, RowSummary, StudyResults
from antibody.app.study.suite import ModelRow, SuiteResults

BETTER = "lower HS and higher FA is better (bottom right)"


@dataclass
class Point:
    """One row's point in one panel, in %: its mean, the std over seeds (None: one seed),
    each seed's own (FA, HS), and the paper's (FA, HS) where the paper reports both."""

    row: str
    fa: float
    hs: float
    fa_std: Optional[float] = None
    hs_std: Optional[float] = None
    seeds: list[tuple[float, float]] = field(default_factory=list)
    n_seeds: int = 1
    paper: Optional[tuple[float, float]] = None


@dataclass
class Panel:
    title: str
    points: list[Point]


def row_colours(rows: list[str]) -> dict[str, tuple]:
    """A distinct colour per row in row order: tab10 up to 10 rows; up to 20, tab20's dark
    hues first and then its light ones (tab20 pairs each hue's dark and light shade, so taken
    in order two neighbouring rows would look alike); beyond, evenly spaced on turbo."""
    import matplotlib
    import numpy as np

    n = len(rows)
    if n <= 10:
        colours = list(matplotlib.colormaps["tab10"].colors[:n])
    elif n <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors
        colours = [tab20[i] for i in [*range(0, 20, 2), *range(1, 20, 2)]][:n]
    else:
        colours = [tuple(c[:3]) for c in matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n))]
    return {r: tuple(float(x) for x in c) for r, c in zip(rows, colours, strict=True)}


def study_rows(results: StudyResults) -> list[str]:
    """The study's rows in its file's order (the cells', pending ones included), so that a row
    keeps its colour while others are still running and in every plot of the study."""
    return list(dict.fromkeys([c.row for c in results.cells] + [s.row for s in results.summary]))


def _pct(stat: Optional[MeanStd]) -> Optional[float]:
    return None if stat is None or stat.mean is None else 100.0 * stat.mean


def _std(stat: MeanStd) -> Optional[float]:
    return None if stat.std is None else 100.0 * stat.std


def _varying(axes: list[str], entries: list[RowSummary]) -> list[str]:
    return [a for a in axes if len({str(e.value(a)) for e in entries}) > 1]


def _where(values) -> str:
    return ", ".join(f"{a.rsplit('.', 1)[-1]}={v}" for a, v in values)


def study_panels(results: StudyResults) -> tuple[list[Panel], list[str]]:
    """The study's points, one panel per combination of the axis values that vary, and the
    notes on what could not be drawn (a row without FA or HS; a paper row without FA).

    One panel per axis value rather than labelled points in one panel: each panel is the
    trade-off at one setting (another poison ratio is another attack), a row keeps its
    colour across panels without a text label on every point, and the paper's points belong
    to its setting (`paper.at`) only, so they are drawn in that panel and nowhere else."""
    axes, summary = results.axes, results.summary
    varying = _varying(axes, summary)
    cells = results.evaluated
    paper = results.paper or {}
    paper_rows = {r["row"]: r for r in paper.get("rows") or []}
    groups: dict[tuple, list[RowSummary]] = {}
    for s in summary:
        groups.setdefault(tuple(str(s.value(a)) for a in varying), []).append(s)
    panels, no_paper_fa = [], []
    missing: dict[str, list[str]] = {}  # "<row>: no FA" -> the settings where it is missing
    for key, entries in groups.items():
        where = _where(zip(varying, key, strict=True))
        at_paper = bool(paper_rows) and _matches(entries[0].axes, paper.get("at") or {})
        title = where or (_where((paper.get("at") or {}).items()) if at_paper else "")
        points = []
        for s in entries:
            fa_stat, hs_stat = s.get("FA"), s.get(HS)
            fa, hs = _pct(fa_stat), _pct(hs_stat)
            if fa_stat is None or hs_stat is None or fa is None or hs is None:
                missing.setdefault(f"{s.row}: no {'FA' if fa is None else 'HS'}", []).append(where)
                continue
            same = [c for c in cells if c.row == s.row and all(str(c.value(a)) == str(s.value(a)) for a in axes)]
            seeds = [(100.0 * c.metrics["FA"], 100.0 * c.metrics[HS]) for c in same
                     if c.metrics.get("FA") is not None and c.metrics.get(HS) is not None]
            p = Point(s.row, fa, hs, _std(fa_stat), _std(hs_stat), seeds,
                      n_seeds=min(fa_stat.seeds or 1, hs_stat.seeds or 1))
            theirs = paper_rows.get(s.row) if at_paper else None
            if theirs is not None:
                if theirs.get("paper_fa") is None:
                    no_paper_fa.append(s.row)
                else:
                    p.paper = (float(theirs["paper_fa"]), float(theirs["paper_hs"]))
            points.append(p)
        if points:
            panels.append(Panel(title + (" (the paper's setting)" if at_paper else ""), points))
    # a row missing a metric everywhere is named once, not once per panel
    notes = [what + ("" if len(wheres) == len(groups) else f" at {'; '.join(wheres)}")
             for what, wheres in missing.items()]
    if no_paper_fa:
        notes.append("the paper gives no FA for " + ", ".join(no_paper_fa))
    return panels, notes


def _sizes(entries: list[RowSummary], key: str) -> str:
    sizes = sorted({e.n.get(key) for e in entries if e.n.get(key)})
    return "?" if not sizes else "/".join(str(n) for n in sizes)


def draw_study(results: StudyResults):
    """The study's trade-off Figure, or None when no row has both HS and FA."""
    panels, notes = study_panels(results)
    if not panels:
        return None
    summary = results.summary
    seeds = sorted({c.seed for c in results.evaluated})
    paper = results.paper or {}
    lines = [f"study {results.study}: Harmful Score against Fine-tune Accuracy per row; {BETTER}",
             f"filled: our mean ± sample std over seeds {', '.join(map(str, seeds)) or '?'} "
             f"(faint dots: each seed); n = {_sizes(summary, HS)} harmful, {_sizes(summary, 'FA')} task prompts"]
    if any(p.paper for panel in panels for p in panel.points):
        lines.append(f"hollow: the paper ({paper.get('setting') or paper.get('source') or 'as transcribed'}), "
                     "dotted to ours")
    if notes:
        lines.append("not drawn: " + "; ".join(notes))
    return draw(panels, row_colours(study_rows(results)), lines)


def draw(panels: list[Panel], colours: dict[str, tuple], title: list[str]):
    """Panels side by side (three a line) sharing both axes, so that they compare at a glance;
    one legend, outside the panels on the right, so it never hides a point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = 4.8 * ncols + 3.2  # inches: the panels and the legend beside them
    lines = [line for t in title for line in textwrap.wrap(t, int(12 * width))]  # ~12 characters an inch at 9 pt
    fig = Figure(figsize=(width, 4.2 * nrows + 0.17 * len(lines) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    seeds_in_legend: dict[str, int] = {}
    for ax, panel in zip(grid.flat, panels, strict=False):
        for p in panel.points:
            c = colours[p.row]
            seeds_in_legend[p.row] = p.n_seeds
            if len(p.seeds) > 1:  # one seed is the mean itself
                xs, ys = zip(*p.seeds, strict=True)
                ax.scatter(xs, ys, s=14, color=c, alpha=0.35, linewidths=0, zorder=2, gid=f"seeds|{p.row}")
            if p.paper is not None:
                ax.plot([p.fa, p.paper[0]], [p.hs, p.paper[1]], ls=":", lw=0.9, color=c, zorder=1, gid=f"link|{p.row}")
                ax.plot(*p.paper, marker="s", ms=8, ls="none", mfc="none", mec=c, mew=1.6, zorder=3,
                        gid=f"paper|{p.row}")
            line, _, bars = ax.errorbar(p.fa, p.hs, xerr=p.fa_std, yerr=p.hs_std, fmt="o", ms=7, color=c,
                                        ecolor=c, elinewidth=1.2, capsize=3, zorder=4)
            line.set_gid(f"mean|{p.row}")
            kinds = [k for k, err in (("xerr", p.fa_std), ("yerr", p.hs_std)) if err is not None]
            for kind, bar in zip(kinds, bars, strict=True):
                bar.set_gid(f"{kind}|{p.row}")
        ax.margins(0.12)
        ax.grid(alpha=0.3)
        if panel.title:
            ax.set_title(panel.title, fontsize=9)
    for ax in grid.flat[len(panels):]:
        ax.remove()
    for j in range(ncols):  # the lowest panel of each column: the one below it may be empty
        ax = grid[(len(panels) - 1 - j) // ncols, j]
        ax.tick_params(labelbottom=True)
        ax.set_xlabel("Fine-tune Accuracy, FA (%)  → higher is better")
    for ax in grid[:, 0]:
        ax.set_ylabel("Harmful Score, HS (%)  ↓ lower is better")
    most = max(seeds_in_legend.values(), default=1)
    handles = [Line2D([], [], marker="o", ls="none", color=colours[r],
                      label=r + (f" ({k} seed{'s' * (k != 1)})" if k != most else ""))
               for r, k in sorted(seeds_in_legend.items(), key=lambda x: list(colours).index(x[0]))]
    # what the marker styles mean, in grey after the rows (only the styles this figure uses)
    drawn = [p for panel in panels for p in panel.points]
    grey = "0.45"
    if any(p.fa_std is not None or p.hs_std is not None for p in drawn):
        handles.append(Line2D([], [], marker="o", color=grey, label="mean ± std over seeds"))
    if any(len(p.seeds) > 1 for p in drawn):
        handles.append(Line2D([], [], marker="o", ms=4, ls="none", color=grey, alpha=0.4, label="one seed"))
    if any(p.paper for p in drawn):
        handles.append(Line2D([], [], marker="s", ls=":", lw=0.9, mfc="none", color=grey, label="the paper"))
    # on the top-right panel's right, outside it: constrained layout makes room for an axes'
    # legend, and it starts below the title (a figure legend would run up into the title)
    grid[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
                       fontsize=8, frameon=False)
    fig.suptitle("\n".join(lines), fontsize=9)
    return fig


def _model_fa_key(row: ModelRow, task: Optional[str]) -> Optional[str]:
    key = f"{task}/accuracy"
    return key if key in row.metrics else _task_metric(row.metrics)


def model_panels(results: SuiteResults) -> tuple[list[Panel], list[str]]:
    """A demo suite's models as points (one seed each), named by their row; the job name
    where two models share a row's name."""
    rows = results.rows
    labels = [r.label or r.job for r in rows]
    names = [r.job if labels.count(label) > 1 else label for r, label in zip(rows, labels, strict=True)]
    points, notes = [], []
    for r, name in zip(rows, names, strict=True):
        fa_key = _model_fa_key(r, results.task)
        fa = None if fa_key is None else (r.metrics[fa_key] or {}).get("value")
        hs = (r.metrics.get(HS) or {}).get("value")
        if fa is None or hs is None:
            notes.append(f"{name}: no {'FA' if fa is None else 'HS'}")
            continue
        points.append(Point(name, 100.0 * fa, 100.0 * hs))
    return ([Panel("", points)] if points else []), notes


def draw_models(results: SuiteResults):
    """A demo suite's trade-off Figure (one seed: no error bars), or None when no model has
    both HS and FA."""
    panels, notes = model_panels(results)
    if not panels:
        return None
    hs_n = sorted({(r.metrics.get(HS) or {}).get("n") for r in results.rows} - {None})
    suite = results.suite
    lines = [f"{results.config}{'' if suite in (None, 'main') else ' suite=' + suite}: Harmful Score "
             f"against Fine-tune Accuracy ({results.task}) per model; {BETTER}",
             f"one seed per model, so no error bars; n = {'/'.join(map(str, hs_n)) or '?'} harmful prompts"]
    if notes:
        lines.append("not drawn: " + "; ".join(notes))
    return draw(panels, row_colours([p.row for p in panels[0].points]), lines)


def save(fig, path: Path) -> bool:
    """Write the figure (False, and a stale file removed, when there is none to write)."""
    if fig is None:
        Path(path).unlink(missing_ok=True)
        return False
    fig.savefig(path, dpi=110)
    return True


def study_tradeoff(results: StudyResults, path: Path) -> bool:
    return save(draw_study(results), path)


def models_tradeoff(results: SuiteResults, path: Path) -> bool:
    return save(draw_models(results), path)
