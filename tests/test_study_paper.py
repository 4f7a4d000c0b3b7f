"""A study set beside the paper: orderings, Kendall's tau, separation from the reference."""

from __future__ import annotations

import math
import statistics

import pytest
import yaml

from antibody.app.report import block_name, render
from antibody.app.study.paper import paper_comparison, paper_table, t_interval
from antibody.app.study.report import study_table
from antibody.app.study.results import StudyResults
from antibody.config.errors import ConfigError
from antibody.config.study import load_study

HS = "harmful/harmful_score"


def _summary(row: str, mean: float, std: float, seeds: int = 3, p: float = 0.2) -> dict:
    return {"row": row, "data.user.p": p, "n": {HS: 64}, HS: {"mean": mean, "std": std, "seeds": seeds},
            "FA": {"mean": 0.1, "std": 0.01, "seeds": seeds}}


def _results() -> dict:
    diffs = {"b": [-0.18, -0.20, -0.22], "c": [0.02, -0.03, 0.01]}
    return {
        "kind": "study", "study": "fake", "reference": "a", "axes": ["data.user.p"], "jobs": 9, "cells": [],
        "summary": [_summary("a", 0.60, 0.02), _summary("b", 0.40, 0.1), _summary("c", 0.60, 0.03),
                    _summary("a", 0.10, 0.02, p=0.05)],
        # as study.report.summarise writes them: mean ± sample std and the 95% t interval
        "paired": [{"row": r, "data.user.p": 0.2, "p_values": [1.0] * 3, "ci95": list(t_interval(ds)),
                    "diff": {"mean": statistics.fmean(ds), "std": statistics.stdev(ds), "seeds": 3}}
                   for r, ds in diffs.items()],
    }


PAPER = {"source": "a paper", "setting": "7B", "at": {"data.user.p": 0.2},
         "hs": {"a": 24.0, "b": 1.2, "c": 9.0, "d": 5.0}, "fa": {"a": 10.9}}


def test_t_interval_matches_the_t_quantile():
    lo, hi = t_interval([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2 df), from tables
    assert (lo, hi) == pytest.approx((0.2 - half, 0.2 + half))
    assert t_interval([0.1]) is None


def test_ranks_tau_discordant_pairs_and_separation():
    out = paper_comparison(StudyResults.from_json(_results()), PAPER)
    rows = {r["row"]: r for r in out["rows"]}
    assert out["pending"] == ["d"]  # in the paper, not evaluated here
    # the p = 0.05 cell of `a` is not the paper's setting
    assert rows["a"]["hs"]["mean"] == pytest.approx(60.0)
    # the paper's rank among all four of its rows (d: 5.0 is second), ours among the three evaluated
    assert {k: r["paper_rank"] for k, r in rows.items()} == {"b": 1, "c": 3, "a": 4}
    # here a and c tie at 60%: they share rank 2.5
    assert {k: r["rank"] for k, r in rows.items()} == {"b": 1, "a": 2.5, "c": 2.5}
    # paper: b < c < a; here: b < a = c (a tie). Pairs (b, c), (b, a) concordant, (c, a) tied here:
    # tau-b = (2 - 0) / sqrt((3 - 0) * (3 - 1)) by its definition
    assert out["kendall_tau"]["tau"] == pytest.approx(2 / math.sqrt(6))
    assert out["discordant"] == []
    # b's paired differences (-18, -20, -22 points): the t interval excludes 0; c's do not
    assert rows["b"]["separates"] is True and rows["c"]["separates"] is False
    assert rows["b"]["diff_to_reference"]["mean"] == pytest.approx(-20.0)
    assert "separates" not in rows["a"]  # the reference itself
    table = paper_table(out)
    assert "| c | 9.00 | 3 | 60.0 ± 3.0 | 2.5 |" in table and "**no**" in table and "Not evaluated yet: `d`" in table


def test_discordant_pairs_are_listed():
    results = _results()
    results["summary"][1] = _summary("b", 0.70, 0.1)  # b now the most harmful here
    out = paper_comparison(StudyResults.from_json(results), PAPER)
    assert sorted(map(tuple, out["discordant"])) == [("a", "b"), ("b", "c")]
    assert out["kendall_tau"]["tau"] < 0


def test_a_study_results_file_renders_into_its_own_readme_block():
    results = dict(_results(), paper=paper_comparison(StudyResults.from_json(_results()), PAPER))
    assert block_name(results) == "study-fake-results"
    assert render(results) == study_table(StudyResults.from_json(results))
    assert "Against the paper (7B; a paper)" in render(results)


def _study(tmp_path, paper: dict) -> dict:
    doc = {"name": "t", "experiment": "tiny", "reference": "a", "seeds": [1], "axes": {"data.user.p": [0.2]},
           "rows": {"a": {"align": [], "finetune": []}, "b": {"align": [], "finetune": []}}, "paper": paper}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_paper_section_is_checked(tmp_path):
    ok = {"source": "s", "setting": "x", "at": {"data.user.p": 0.2}, "hs": {"a": 1.0, "b": 2.0}}
    assert load_study(_study(tmp_path, ok)).paper.hs == {"a": 1.0, "b": 2.0}
    with pytest.raises(ConfigError, match=r"paper.hs: 'z' is not a row"):
        load_study(_study(tmp_path, dict(ok, hs={"a": 1.0, "z": 2.0})))
    with pytest.raises(ConfigError, match=r"paper.at: data.user.p=0.5 is not a value"):
        load_study(_study(tmp_path, dict(ok, at={"data.user.p": 0.5})))
    with pytest.raises(ConfigError, match=r"s.yaml:\d+: unknown config key 'paper.hss'"):
        load_study(_study(tmp_path, dict(ok, hss={})))


def test_weights_table_shows_every_source_and_term_of_weighted_rows_only():
    from antibody.app.study.report import weights_table

    def stat(mean, std):
        return {"mean": mean, "std": std, "seeds": 3}

    results = {"axes": ["data.user.p"], "summary": [
        {"row": "sft", "data.user.p": 0.2, "weights/harmful_x_batch": stat(1.0, 0.0),
         "detector/auroc_neg_ratio": stat(0.49, 0.0)},
        {"row": "ab", "data.user.p": 0.2, "weights/harmful_x_batch": stat(0.04, 0.01),
         "weights/arithmetic_x_batch": stat(1.3, 0.1), "detector/auroc_neg_ratio": stat(0.75, 0.02),
         "rows/harmful_at_least_half": stat(0.05, 0.02),
         "detector/auroc_logp_refusal": stat(0.6, 0.05)}]}
    table = weights_table(StudyResults.from_json(results)).splitlines()
    assert table[2] == ("| row | data.user.p | harmful | arithmetic | harmful rows w x B >= 0.5 | AUROC logp_refusal "
                        "| AUROC neg_ratio |")
    assert table[4] == "| ab | 0.2 | 0.04 ± 0.01 | 1.30 ± 0.10 | 0.05 ± 0.02 | 0.60 ± 0.05 | 0.75 ± 0.02 |"
    assert len(table) == 5  # the uniform row is not shown
    results["summary"].pop()
    assert weights_table(StudyResults.from_json(results)) == ""


def test_named_comparisons_are_summarised_over_seeds_with_a_t_interval():
    """Three seeds of one question: rates and the paired difference as mean ± std, the t
    interval from t(0.975, 2) = 4.303 (tables), p per seed in seed order."""
    from antibody.app.study.report import named_comparisons_table, named_over_seeds

    def comp(seed, rate_a, rate_b, p):
        return {"question": "alignment alone", "metric": "harmful/harmful_score", "a": f"ft-a{seed}",
                "b": f"ft-b{seed}", "row_a": "antibody -> sft", "row_b": "sft -> sft", "data.user.p": 0.2,
                "seed": seed, "rate_a": rate_a, "rate_b": rate_b, "diff": rate_a - rate_b, "p_value": p}

    named = [comp(2, 0.55, 0.60, 0.5), comp(1, 0.50, 0.60, 0.03), comp(3, 0.45, 0.60, 0.001)]
    results = StudyResults.from_json({"axes": ["data.user.p"]})
    results.named_paired = named_over_seeds(named, ["data.user.p"])
    table = named_comparisons_table(results).splitlines()
    assert table[2] == "| question | metric | data.user.p | A | B | A - B | 95% t interval | p per seed |"
    # diffs -0.10, -0.05, -0.15: mean -10.0, std 5.0 points; half width 4.303 x 5.0 / sqrt(3) = 12.4
    assert table[4] == ("| alignment alone | harmful/harmful_score | 0.2 | antibody -> sft 50.0 ± 5.0 | "
                        "sft -> sft 60.0 ± 0.0 | -10.0 ± 5.0 | [-22.4, +2.4] | 0.03, 0.5, 0.001 |")
    assert len(table) == 5
