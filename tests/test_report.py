"""The demo report: weight summaries per source and the rendered README block (no model)."""

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
    metrics = {"harmful/harmful_score": _metric(0.25), "arithmetic/accuracy": _metric(0.5, 128)}
    results = {
        "task": "arithmetic", "eval_sizes": {"harmful/harmful_score": 64, "arithmetic/accuracy": 128},
        "demo_seconds_this_invocation": 600.0, "jobs_trained_this_invocation": 1,
        "jobs_evaluated_this_invocation": 2,
        "rows": [{"job": "x", "label": "x model", "group": "attacked", "metrics": metrics, "weights": weights,
                  "train_seconds": 120.0, "eval_seconds": 60.0}],
        "comparisons": [{"question": "does it help", "a": "x", "b": "y", "metric": "harmful/harmful_score",
                         "n": 64, "rate_a": 0.25, "rate_b": 0.5, "diff": -0.25, "stderr": 0.05,
                         "a_only": 1, "b_only": 17, "p_value": 0.000137}],
    }
    text = render(results)
    # harmful 0.08; arithmetic 0.16; other benign pooled over prose and "other": 8 * 0.2
    assert "| 0.08 / 0.16 / 1.60 |" in text
    assert "| does it help | harmful/harmful_score | x 25.0 | y 50.0 | -25.0 ± 5.0 | 1 / 17 | 0.000137 |" in text
    assert "10.0 min (it trained 1 and evaluated 2 of 1 jobs" in text
    assert "training 2.0 min, evaluation 1.0 min" in text
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
