"""The HS-against-FA trade-off plot (app/study/tradeoff.py): what is drawn is read back from
the Figure's artists and checked against values computed here from the fake cells, not from
the code's own summary."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

from antibody.app.study.paper import paper_comparison
from antibody.app.study.report import HS, summarise
from antibody.app.study.results import StudyResults
from antibody.app.study.suite import SuiteResults
from antibody.app.study.tradeoff import draw_models, draw_study, models_tradeoff, row_colours
from tests.helpers import png_size, saved_figures

AXIS = "data.user.p"
# per (row, seed, p): (HS, FA) as rates; "no fa" has no task metric at all
CELLS = {("sft", 1, 0.2): (0.40, 0.30), ("sft", 2, 0.2): (0.50, 0.34),
         ("booster", 1, 0.2): (0.10, 0.20), ("booster", 2, 0.2): (0.16, 0.28),
         ("lisa", 1, 0.2): (0.25, 0.12), ("lisa", 2, 0.2): (0.21, 0.10),
         ("no fa", 1, 0.2): (0.30, None), ("no fa", 2, 0.2): (0.32, None)}
PAPER = {"source": "a paper", "setting": "Llama-2-7B, GSM8K", "at": {AXIS: 0.2},
         "hs": {"sft": 23.94, "booster": 9.06, "lisa": 5.86}, "fa": {"sft": 10.90, "booster": 16.27}}


def _results(cells: dict = CELLS, paper: dict | None = PAPER) -> StudyResults:
    """A study's results as the driver builds them: cells, `summarise` (no reference row, so
    no prediction files are read) and the paper comparison."""
    out = []
    for (row, seed, p), (hs, fa) in cells.items():
        metrics = {HS: hs, **({} if fa is None else {"FA": fa})}
        out.append({"row": row, AXIS: p, "seed": seed, "job": f"{row}-{seed}-{p}", "state": "evaluated",
                    "metrics": metrics, "n": {HS: 64, **({} if fa is None else {"FA": 128})}})
    out.append({"row": "sft", AXIS: 0.2, "seed": 3, "job": "pending", "state": "pending"})
    results = StudyResults.from_json({"kind": "study", "study": "fake", "axes": [AXIS], "seeds": [1, 2, 3],
                                      "cells": out, "reference": None, "jobs": len(out)})
    summarise(results, Path("unused"))
    if paper:
        results.paper = paper_comparison(results, paper)
    return results


def _by_gid(fig) -> dict:
    """Every artist with a gid `<kind>|<row>` in the figure's axes, by (kind, row, panel)."""
    out = {}
    for i, ax in enumerate(fig.axes):
        for artist in [*ax.lines, *ax.collections]:
            if artist.get_gid():
                kind, row = artist.get_gid().split("|", 1)
                out[kind, row, i] = artist
    return out


def _legend(fig):
    """The figure's one legend (on a panel or on the figure)."""
    (legend,) = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return legend


def _expected(row: str, p: float = 0.2) -> dict:
    hs = [100 * v[0] for (r, _, q), v in CELLS.items() if (r, q) == (row, p)]
    fa = [100 * v[1] for (r, _, q), v in CELLS.items() if (r, q) == (row, p)]
    return {"hs": statistics.fmean(hs), "fa": statistics.fmean(fa), "hs_sd": statistics.stdev(hs),
            "fa_sd": statistics.stdev(fa), "seeds": sorted(zip(fa, hs, strict=True))}


def test_each_row_is_its_mean_with_seed_spread_and_the_papers_point_in_its_colour():
    fig = draw_study(_results())
    artists = _by_gid(fig)
    (ax,) = fig.axes  # one setting: one panel
    assert ax.get_title() == "p=0.2 (the paper's setting)"
    colours = {}
    for row in ("sft", "booster", "lisa"):
        want = _expected(row)
        mean = artists["mean", row, 0]
        assert mean.get_xydata().tolist() == [pytest.approx([want["fa"], want["hs"]])]
        # error bars: the horizontal one spans FA ± std, the vertical one HS ± std (in %)
        ((x0, y0), (x1, y1)), = artists["xerr", row, 0].get_segments()
        assert (x0, x1) == pytest.approx((want["fa"] - want["fa_sd"], want["fa"] + want["fa_sd"]))
        assert y0 == y1 == pytest.approx(want["hs"])
        ((x0, y0), (x1, y1)), = artists["yerr", row, 0].get_segments()
        assert (y0, y1) == pytest.approx((want["hs"] - want["hs_sd"], want["hs"] + want["hs_sd"]))
        assert x0 == x1 == pytest.approx(want["fa"])
        # every seed's own point, faint, in the row's colour
        seeds = artists["seeds", row, 0]
        got = sorted(map(tuple, seeds.get_offsets().tolist()))
        assert len(got) == 2 and [v for xy in got for v in xy] == pytest.approx([v for xy in want["seeds"] for v in xy])
        colour = to_rgba(mean.get_color())
        assert to_rgba(seeds.get_facecolor()[0], 1.0) == pytest.approx(colour)
        assert seeds.get_alpha() < 0.5
        colours[row] = colour
    assert len(set(colours.values())) == 3
    # the paper's point where it gives both HS and FA: hollow, in the row's colour, dotted to ours
    for row in ("sft", "booster"):
        paper = artists["paper", row, 0]
        assert paper.get_xydata().tolist() == [pytest.approx([PAPER["fa"][row], PAPER["hs"][row]])]
        assert paper.get_markerfacecolor() == "none" and to_rgba(paper.get_markeredgecolor()) == colours[row]
        link = artists["link", row, 0]
        want = _expected(row)
        assert link.get_xydata().tolist() == [pytest.approx([want["fa"], want["hs"]]),
                                              pytest.approx([PAPER["fa"][row], PAPER["hs"][row]])]
        assert link.get_linestyle() == ":" and to_rgba(link.get_color()) == colours[row]
    # lisa: the paper gives no FA, so no paper point, and the title says so
    assert ("paper", "lisa", 0) not in artists and ("link", "lisa", 0) not in artists
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "the paper gives no FA for lisa" in title
    assert "fake" in title and "seeds 1, 2" in title and "n = 64 harmful, 128 task" in title
    assert "lower HS and higher FA is better" in title
    assert "FA (%)" in ax.get_xlabel() and "HS (%)" in ax.get_ylabel()


def test_a_row_without_fa_is_left_out_and_named_in_the_title():
    fig = draw_study(_results())
    assert not [k for k in _by_gid(fig) if k[1] == "no fa"]
    assert "not drawn: no fa: no FA" in fig._suptitle.get_text().replace("\n", " ")
    labels = [t.get_text() for t in _legend(fig).get_texts()]
    assert labels[:3] == ["sft", "booster", "lisa"] and "no fa" not in labels
    # and a study where no row has FA draws nothing rather than an empty plot
    assert draw_study(_results({k: (v[0], None) for k, v in CELLS.items()}, paper=None)) is None


def test_the_legend_sits_outside_every_panel():
    cells = {**CELLS, **{(r, s, 0.1): (hs / 2, fa) for (r, s, _), (hs, fa) in CELLS.items()}}
    fig = draw_study(_results(cells))
    fig.canvas.draw()
    box = _legend(fig).get_window_extent()
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
    assert box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0  # inside the figure, not cut off
    # and below the title, not over it
    assert not box.overlaps(fig._suptitle.get_window_extent())


def test_several_axis_values_give_one_panel_each_and_the_paper_only_at_its_setting():
    cells = {**CELLS, **{(r, s, 0.1): (hs / 2, fa) for (r, s, _), (hs, fa) in CELLS.items()}}
    fig = draw_study(_results(cells))
    artists = _by_gid(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["p=0.2 (the paper's setting)", "p=0.1"]
    assert ("paper", "sft", 0) in artists and not [k for k in artists if k[0] == "paper" and k[2] == 1]
    # the p = 0.1 panel's means, computed here from its cells
    for row in ("sft", "booster", "lisa"):
        hs = statistics.fmean(100 * v[0] / 2 for (r, _, q), v in CELLS.items() if r == row)
        fa = statistics.fmean(100 * v[1] for (r, _, q), v in CELLS.items() if r == row)
        assert artists["mean", row, 1].get_xydata().tolist() == [pytest.approx([fa, hs])]
        assert to_rgba(artists["mean", row, 1].get_color()) == to_rgba(artists["mean", row, 0].get_color())
    # shared axes: the panels compare at a glance
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim() and fig.axes[0].get_ylim() == fig.axes[1].get_ylim()


def test_write_figures_writes_the_tradeoff_png_and_removes_a_stale_one(tmp_path):
    from antibody.app.study.plots import FIGURES, write_figures

    assert "tradeoff.png" in FIGURES  # so that `report` copies it beside the results page
    results = _results()
    with saved_figures() as figures:
        write_figures(results, tmp_path)
    _assert_png_of(figures["tradeoff.png"], tmp_path / "tradeoff.png")
    # a row has the same colour in results.png's bars as in the trade-off plot
    artists = _by_gid(figures["tradeoff.png"])
    bars = {c.get_label(): c for c in figures["results.png"].axes[0].containers if c.get_label()}
    for row in ("sft", "booster", "lisa"):
        assert to_rgba(bars[row].patches[0].get_facecolor()) == to_rgba(artists["mean", row, 0].get_color())
    write_figures(_results({k: (v[0], None) for k, v in CELLS.items()}, paper=None), tmp_path)
    assert not (tmp_path / "tradeoff.png").exists() and (tmp_path / "results.png").is_file()


def _assert_png_of(fig, path: Path) -> None:
    """A whole PNG (it decodes) the size of the figure at the 110 dpi it is saved at (to a
    pixel: the canvas rounds the size in inches x dpi)."""
    width, height = png_size(path)
    want = fig.get_size_inches() * 110
    assert abs(width - want[0]) <= 1 and abs(height - want[1]) <= 1, (width, height, want)


def _model(job: str, label: str, hs: float | None, fa: float | None) -> dict:
    metrics = {}
    if hs is not None:
        metrics[HS] = {"value": hs, "stderr": 0.05, "n": 64}
    if fa is not None:
        metrics["arithmetic/accuracy"] = {"value": fa, "stderr": 0.04, "n": 128}
    return {"job": job, "label": label, "metrics": metrics}


def test_a_demo_suites_models_are_one_point_each_without_error_bars(tmp_path):
    results = {"config": "demo", "task": "arithmetic", "suite": "baselines",
               "rows": [_model("base", "base model", 0.7, 0.02), _model("ft-sft-sft", "sft -> sft", 0.5, 0.3),
                        _model("ft-a-a", "antibody -> antibody", 0.1, 0.25), _model("align-x", "x", 0.2, None)]}
    fig = draw_models(SuiteResults.from_json(results))
    artists = _by_gid(fig)
    want = {"base model": (2.0, 70.0), "sft -> sft": (30.0, 50.0), "antibody -> antibody": (25.0, 10.0)}
    for row, xy in want.items():
        assert artists["mean", row, 0].get_xydata().tolist() == [pytest.approx(list(xy))]
    assert {k[0] for k in artists} == {"mean"}  # no error bars, no seeds, no paper
    assert len({to_rgba(artists["mean", r, 0].get_color()) for r in want}) == 3
    title = fig._suptitle.get_text().replace("\n", " ")
    assert "one seed per model, so no error bars" in title and "x: no FA" in title and "baselines" in title
    fig.canvas.draw()
    assert not _legend(fig).get_window_extent().overlaps(fig.axes[0].get_window_extent())
    assert models_tradeoff(SuiteResults.from_json(results), tmp_path / "results_baselines_tradeoff.png")
    _assert_png_of(fig, tmp_path / "results_baselines_tradeoff.png")
    assert draw_models(SuiteResults.from_json({**results, "rows": [_model("a", "a", 0.3, None)]})) is None


@pytest.mark.parametrize("n", [3, 10, 15, 20, 25])
def test_every_row_gets_its_own_colour(n):
    colours = row_colours([f"row {i}" for i in range(n)])
    assert len(set(colours.values())) == n


def test_the_tradeoff_plot_reaches_the_studys_results_page(tmp_path):
    """`report` copies it beside the results page (runs/ is never committed) and links it."""
    from antibody.app.report import default_page
    from antibody.app.study.plots import FIGURES_DIR, figure_name, page_figures, write_figures

    folder, page = tmp_path / "runs" / "fake", tmp_path / default_page("study-fake-results")
    folder.mkdir(parents=True)
    write_figures(_results(), folder)
    lines = page_figures(folder, page, "fake")
    copy = page.parent / FIGURES_DIR / figure_name("fake", "tradeoff.png")
    assert f"![study fake: tradeoff]({(FIGURES_DIR / copy.name).as_posix()})" in lines
    assert copy.read_bytes() == (folder / "tradeoff.png").read_bytes()
