"""A study's plots, written beside its results.json: `results.png` (HS and FA per row, and
the harmful rows' weight), `tradeoff.png` (HS against FA per row beside the paper's points:
study.tradeoff), when some row weighted its upload, `weights.png` (each source's weight
x batch size and each term's AUROC as a harmful-row detector), and for a study with an
`attack` axis, `heatmap.png` (HS per defence and attack: study.heatmap)."""

from __future__ import annotations

from pathlib import Path

from antibody.app.study.report import HS, WEIGHT, weight_key_name, weight_keys, weighted_rows
from antibody.app.study.results import RowSummary, StudyResults

FIGURES = ("results.png", "weights.png", "tradeoff.png", "heatmap.png")
# where `report` puts a study's plots, relative to its results page (runs/ is never committed)
FIGURES_DIR = Path("figures")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or a cluster node
    import matplotlib.pyplot as plt

    return plt


def plot(results: StudyResults, path: Path) -> None:
    """HS and FA per row (mean ± std over seeds): against the axis when exactly one numeric
    axis has several values, else as bars; a third panel with the harmful weight share."""
    import numpy as np

    from antibody.app.study.tradeoff import row_colours, study_rows

    plt = _pyplot()
    summary = results.summary
    varying = _varying(results.axes, summary)
    numeric = len(varying) == 1 and all(isinstance(s.value(varying[0]), (int, float)) for s in summary)
    panels = [(HS, "Harmful Score (%)", 100.0), ("FA", "Fine-tune Accuracy (%)", 100.0)]
    if any(WEIGHT in s.stats for s in summary):
        panels.append((WEIGHT, "harmful weight x batch (1 = SFT)", 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    rows = list(dict.fromkeys(s.row for s in summary))
    # a row's colour as in tradeoff.png (the default cycle repeats after ten rows)
    colours = row_colours(study_rows(results))
    for ax, (key, title, scale) in zip(np.atleast_1d(axes), panels, strict=True):
        for i, row in enumerate(rows):
            pts = sorted(((s.value(varying[0]) if numeric else i, s.get(key)) for s in summary if s.row == row),
                         key=lambda p: p[0])
            pts = [(x, m) for x, m in pts if m is not None and m.mean is not None]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            ys = [scale * m.mean for _, m in pts]
            err = [scale * (m.std or 0.0) for _, m in pts]
            if numeric:
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=row, color=colours[row])
            else:
                ax.bar(xs, ys, yerr=err, capsize=3, label=row, color=colours[row])
        ax.set_title(title)
        if numeric:
            ax.set_xlabel(varying[0])
        else:
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(rows, rotation=30, ha="right", fontsize=7)
    # beside the last panel, not on any panel's bars or lines; every panel's rows, since a row
    # may lack one metric (FA, the weight)
    handles = {}
    for ax in np.atleast_1d(axes):
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    np.atleast_1d(axes)[-1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left",
                                   bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"study {results.study}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _varying(axes: list[str], summary: list[RowSummary]) -> list[str]:
    """The axes with more than one value among these summary rows."""
    return [a for a in axes if len({str(s.value(a)) for s in summary}) > 1]


def weights_plot(results: StudyResults, path: Path) -> bool:
    """Grouped bars per weighted row (and axis values): each source's mean weight x batch size
    (1 = uniform, as under SFT) and each detector term's AUROC (0.5 = chance), mean ± std over
    seeds. Returns False, writing nothing, when no row weighted its upload."""
    import numpy as np

    summary = weighted_rows(results)
    if not summary:
        return False
    plt = _pyplot()
    keys = weight_keys(summary)
    panels = [([k for k in keys if k.startswith("weights/")], "mean weight x batch size", 1.0),
              ([k for k in keys if k.startswith("detector/")], "harmful-row detector AUROC", 0.5)]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 1.1 * len(summary) + 3), 4.6 * len(panels)),
                             squeeze=False)
    x = np.arange(len(summary))
    varying = _varying(results.axes, summary)
    labels = [s.row + "".join(f"\n{a.rsplit('.', 1)[-1]}={s.value(a)}" for a in varying) for s in summary]
    for ax, (group, title, level) in zip(axes[:, 0], panels, strict=True):
        width = 0.8 / len(group)
        for j, key in enumerate(group):
            stats = [s.get(key) for s in summary]
            ys = [np.nan if st is None or st.mean is None else st.mean for st in stats]
            err = [0.0 if st is None else st.std or 0.0 for st in stats]
            ax.bar(x + (j - (len(group) - 1) / 2) * width, ys, width, yerr=err, capsize=2,
                   label=weight_key_name(key))
        ax.axhline(level, color="grey", lw=0.8, ls="--")  # uniform weight / chance
        ax.set_title(title)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    fig.suptitle(f"study {results.study}: what the weights did, mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_figures(results: StudyResults, root: Path) -> None:
    """The study's plots into its folder; a stale weights.png (no weighted row now),
    tradeoff.png (no row with both HS and FA now) or heatmap.png (no attack axis) is removed."""
    from antibody.app.study.heatmap import write_heatmap
    from antibody.app.study.tradeoff import study_tradeoff

    plot(results, root / FIGURES[0])
    if not weights_plot(results, root / FIGURES[1]):
        (root / FIGURES[1]).unlink(missing_ok=True)
    study_tradeoff(results, root / FIGURES[2])  # removes its own stale file
    write_heatmap(results, root / FIGURES[3])  # likewise


def figure_name(study: str, figure: str) -> str:
    return f"study-{study}-{figure}"


def page_figures(folder: Path, page: Path, study: str) -> str:
    """The study's plots found in `folder` copied beside its results page into FIGURES_DIR as
    study-<name>-<plot>.png (runs/ is never committed); returns the Markdown image lines that
    show them in the page's block. A plot the study no longer draws loses its old copy."""
    import shutil

    lines = []
    target = page.parent / FIGURES_DIR
    for figure in FIGURES:
        name = figure_name(study, figure)
        if (folder / figure).is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / figure, target / name)
            lines.append(f"![study {study}: {Path(figure).stem}]({(FIGURES_DIR / name).as_posix()})")
        else:
            (target / name).unlink(missing_ok=True)
    return "".join(f"\n\n{line}" for line in lines)
