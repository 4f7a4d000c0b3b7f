"""The demo report: weight summaries per source and the rendered results-page blocks (no model)."""

from __future__ import annotations

import math

from antibody.app.demo.tables import weight_summary
from antibody.app.report import render


def _w(uid, harmful, w, source=None):
    row = {"uid": uid, "is_harmful": harmful, "w": w}
    if source is not None:
        row["source"] = source
    return row


def test_weight_summary_by_source_hand_computed():
    rows = [
        _w("generated_harmful-aa", True, 0.05, "generated_harmful"),
        _w("arithmetic-bb", False, 0.10, "arithmetic"),
        _w("arithmetic-cc", False, 0.20, "arithmetic"),
        _w("benign_prose-dd", False, 0.65),  # an older file without "source": read from the uid
    ]
    s = weight_summary(rows, batch_size=4)
    assert math.isclose(s["mean_weight_harmful_x_batch"], 4 * 0.05)
    assert math.isclose(s["mean_weight_benign_x_batch"], 4 * (0.10 + 0.20 + 0.65) / 3)
    assert math.isclose(s["benign_by_source"]["arithmetic"]["mean_weight_x_batch"], 4 * 0.15)
    assert s["benign_by_source"]["arithmetic"]["rows"] == 2
    assert math.isclose(s["benign_by_source"]["benign_prose"]["mean_weight_x_batch"], 4 * 0.65)
    assert "generated_harmful" not in s["benign_by_source"] and s["rows_seen"] == 4
    assert s["harmful_rows_at_least_half"] == 0.0  # 4 x 0.05 = 0.2 < 0.5


def test_harmful_spread_separates_runs_with_the_same_mean_weight():
    """Same mean harmful weight (0.5 x B), one run on a single row, the other on all four."""
    few = [_w(f"h-{i}", True, w, "harmful") for i, w in enumerate((0.5, 0.0, 0.0, 0.0))]
    many = [_w(f"h-{i}", True, 0.125, "harmful") for i in range(4)]
    for rows, spread in ((few, 0.25), (many, 1.0)):
        s = weight_summary(rows, batch_size=4)
        assert math.isclose(s["mean_weight_harmful_x_batch"], 0.5)
        assert s["harmful_rows_at_least_half"] == spread  # 4 x 0.125 = 0.5 counts (>=)
    assert weight_summary([_w("a-1", False, 0.5, "arithmetic")], 4)["harmful_rows_at_least_half"] is None


def _metric(value, n=64):
    return {"value": value, "stderr": math.sqrt(value * (1 - value) / n), "n": n}


def test_render_shows_weights_per_source_comparisons_and_wall_time():
    weights = weight_summary([_w("h-1", True, 0.01, "generated_harmful"), _w("a-1", False, 0.02, "arithmetic"),
                              _w("p-1", False, 0.3, "benign_prose"), _w("p-2", False, 0.1, "other")], 8)
    x_metrics = {"harmful/harmful_score": _metric(0.25), "arithmetic/accuracy": _metric(0.5, 128)}
    y_metrics = {"harmful/harmful_score": _metric(0.5), "arithmetic/accuracy": _metric(0.5, 128)}
    # A consistent invocation: the comparison's two models are the two rows; this run trained
    # x's fine-tuning job (its alignment was cached) and evaluated x, and found y finished by
    # an earlier run. (The fixture had one row and "evaluated 2", which rendered as the
    # impossible "evaluated 2 of 1 jobs".)
    results = {
        "task": "arithmetic", "eval_sizes": {"harmful/harmful_score": 64, "arithmetic/accuracy": 128},
        "demo_seconds_this_invocation": 600.0, "jobs_trained_this_invocation": 1,
        "jobs_evaluated_this_invocation": 1,
        "rows": [{"job": "x", "label": "x model", "group": "attacked", "metrics": x_metrics, "weights": weights,
                  "train_seconds": 120.0, "eval_seconds": 60.0},
                 {"job": "y", "label": "y model", "group": "attacked", "metrics": y_metrics,
                  "train_seconds": 180.0, "eval_seconds": 60.0}],
        "comparisons": [{"question": "does it help", "a": "x", "b": "y", "metric": "harmful/harmful_score",
                         "n": 64, "rate_a": 0.25, "rate_b": 0.5, "diff": -0.25, "stderr": 0.05,
                         "a_only": 1, "b_only": 17, "p_value": 0.000137}],
    }
    text = render(results)
    # harmful 0.08; arithmetic 0.16; other benign pooled over prose and "other": 8 * 0.2
    assert "| 0.08 / 0.16 / 1.60 |" in text
    assert "| does it help | harmful/harmful_score | x 25.0 | y 50.0 | -25.0 ± 5.0 | 1 / 17 | 0.000137 |" in text
    # 600 s of wall time; 1 evaluated of the 2 models the results hold, the other cached
    assert "10.0 min (it trained 1 job and evaluated 1 of 2 models; the rest were cached)" in text
    # summed over both rows, cached or not: (120 + 180) s and (60 + 60) s
    assert "training 5.0 min, evaluation 2.0 min" in text
    assert "128 arithmetic" in text


def test_each_suite_updates_its_own_readme_block(tmp_path):
    import json

    from antibody.cli.main import main

    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- demo-results:start -->\nmain old\n<!-- demo-results:end -->\n"
                      "b\n<!-- demo-controls-results:start -->\nctl old\n<!-- demo-controls-results:end -->\nc\n")
    rows = [{"job": "j", "label": "control row", "group": "g", "metrics": {}}]
    res = tmp_path / "results_controls.json"
    res.write_text(json.dumps({"task": "arithmetic", "suite": "controls", "rows": rows}))
    assert main(["report", str(res), str(readme)]) == 0
    text = readme.read_text()
    assert "main old" in text and "ctl old" not in text and "| control row |" in text
    assert text.startswith("a\n") and text.endswith("c\n")
    # a README without the suite's block is an error naming the block, and is left as it was
    readme.write_text("no blocks\n")
    assert main(["report", str(res), str(readme)]) == 2
    assert readme.read_text() == "no blocks\n"


def test_each_block_has_its_results_page():
    from pathlib import Path

    from antibody.app.report import default_page

    pages = {"demo-results": "docs/results/demo.md", "demo-controls-results": "docs/results/demo-controls.md",
             "study-embedded-main-results": "docs/results/embedded-main.md",
             "judge-eval-results": "docs/results/judge-eval.md",
             # both models' bench tables share one page; merge-check belongs to the GPU notes
             "bench-tiny-llama-results": "docs/results/bench.md",
             "bench-smollm2-135m-instruct-results": "docs/results/bench.md",
             "merge-check-results": "docs/gpu.md"}
    assert {b: default_page(b).as_posix() for b in pages} == pages
    # every committed block sits on the page `report` would write it to
    root = Path(__file__).parent.parent
    for page in (root / "docs" / "results").glob("*.md"):
        for block in _blocks(page.read_text()):
            if block.startswith(("demo", "study", "judge", "bench")):
                assert default_page(block) == Path("docs", "results", page.name), (page.name, block)


def _blocks(text: str) -> list[str]:
    import re

    return re.findall(r"<!-- ([\w-]+):start -->", text)


def test_report_writes_the_default_page_and_creates_or_extends_it(tmp_path, monkeypatch, capsys):
    import json

    from antibody.app.report import default_page
    from antibody.cli.main import main

    monkeypatch.chdir(tmp_path)
    rows = [{"job": "j", "label": "control row", "group": "g", "metrics": {}}]
    res = tmp_path / "results_controls.json"
    res.write_text(json.dumps({"task": "arithmetic", "suite": "controls", "rows": rows}))
    page = tmp_path / default_page("demo-controls-results")
    # no page yet: created with the block
    assert main(["report", str(res)]) == 0
    assert _blocks(page.read_text()) == ["demo-controls-results"] and "| control row |" in page.read_text()
    # a page with a reading but no block keeps its text and gets the block at its end
    page.write_text("# Controls\n\nA reading.\n")
    assert main(["report", str(res)]) == 0
    assert page.read_text().startswith("# Controls\n\nA reading.\n\n<!-- demo-controls-results:start -->")
    # `-` prints and writes nothing
    before = page.read_text()
    rows[0]["label"] = "renamed row"
    res.write_text(json.dumps({"task": "arithmetic", "suite": "controls", "rows": rows}))
    capsys.readouterr()
    assert main(["report", str(res), "-"]) == 0
    assert "| renamed row |" in capsys.readouterr().out and page.read_text() == before
    # a page named on the command line must exist: nothing is created elsewhere
    assert main(["report", str(res), str(tmp_path / "typo.txt")]) == 2
    assert not (tmp_path / "typo.txt").exists()


def test_a_study_with_a_paper_comparison_refreshes_the_readme_headline(tmp_path, monkeypatch):
    import json

    from antibody.app.report import default_page
    from antibody.app.study.paper import paper_table
    from antibody.cli.main import main

    monkeypatch.chdir(tmp_path)
    paper = {"setting": "Llama", "source": "paper", "at": {"data.user.p": 0.2}, "reference": "ref", "pending": [],
             "rows": [{"row": "ref", "paper_hs": 20.0, "paper_rank": 2, "hs": {"mean": 60.0, "std": 1.0}, "rank": 2,
                       "paper_fa": None, "fa": None},
                      {"row": "new", "paper_hs": 5.0, "paper_rank": 1, "hs": {"mean": 50.0, "std": 2.0}, "rank": 1,
                       "paper_fa": 15.0, "fa": {"mean": 3.0, "std": 0.5}, "separates": True,
                       "diff_to_reference": {"mean": -10.0, "ci95": [-15.0, -5.0]}}]}
    results = {"kind": "study", "study": "fake", "axes": [], "seeds": [1], "cells": [], "summary": [],
               "reference": "ref", "jobs": 0, "paper": paper}
    res = tmp_path / "runs" / "fake" / "results.json"
    res.parent.mkdir(parents=True)
    res.write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- study-fake-paper:start -->\nold\n<!-- study-fake-paper:end -->\nend\n")
    assert main(["report", str(res)]) == 0
    expected = paper_table(paper)
    assert "| new | 5.00 | 1 | 50.0 ± 2.0 | 1 | -10.0 [-15.0, -5.0] | yes | 15.00 | 3.0 ± 0.5 |" in expected
    assert readme.read_text() == f"# x\n<!-- study-fake-paper:start -->\n{expected}\n<!-- study-fake-paper:end -->\nend\n"
    # the study's own page holds the same comparison inside its full table
    assert expected in (tmp_path / default_page("study-fake-results")).read_text()


def test_the_readme_headline_is_the_embedded_reproductions_paper_comparison():
    """The README's headline block is a copy of the comparison `report` wrote into the
    study's page (both come from one results.json), not a table typed apart from it."""
    from pathlib import Path

    root = Path(__file__).parent.parent
    readme, page = (root / "README.md").read_text(), (root / "docs/results/embedded-main.md").read_text()
    block = "study-embedded-main-paper"
    headline = readme.split(f"<!-- {block}:start -->\n", 1)[1].split(f"\n<!-- {block}:end -->", 1)[0]
    assert headline.startswith("Against the paper (") and "| antibody -> antibody |" in headline
    assert headline in page
