"""Studies: the file, the plan (jobs shared by hash), the run (resumable), the summary."""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import pytest
import yaml

from antibody.app.study.plan import align_key, jobs_of, parse_only, plan
from antibody.app.study.report import summarise
from antibody.app.study.results import StudyResults
from antibody.cli.main import main
from antibody.config import compose
from antibody.config.errors import ConfigError
from antibody.config.schema import Stage
from antibody.config.study import load_study

CONF = Path(__file__).parent.parent / "conf" / "study"


def _write(tmp_path: Path, doc: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _doc(tmp_path: Path, **changes) -> dict:
    doc = {
        "name": "t", "experiment": "tiny", "reference": "sft -> sft", "seeds": [1, 2],
        "fixed": [f"run.output_dir={tmp_path / 'runs'}", "method.align.max_steps=1", "method.finetune.max_steps=1"],
        "axes": {"data.user.p": [0.2]},
        "rows": {"sft -> sft": {"align": ["method.align.method=sft"], "finetune": ["method.finetune.weighting=uniform"]},
                 "sft alignment alone": {"align": ["method.align.method=sft"], "finetune": None}},
    }
    doc.update(changes)
    return doc


def test_every_study_file_loads_and_plans():
    """Every row of every study file composes for each experiment it names (composing all
    cells of the paper studies takes minutes: the first seed and value of the other axes)."""
    for path in sorted(CONF.glob("*.yaml")):
        study = load_study(path)
        only = {"seed": str(study.seeds[0])}
        only.update({k: str(v[0]) for k, v in study.axes.items() if k != "experiment"})
        cells = plan(study, Path("/tmp/unused"), only)
        assert {c.row for c in cells} == set(study.rows), path


def test_each_job_carries_the_config_its_overrides_compose_to_composed_once(tmp_path, monkeypatch):
    """The driver, dry run, reports and trial read a job's planned config instead of
    composing again; it must be exactly what composing the job's overrides gives."""
    from antibody.app.study import plan as study_plan

    calls = []
    real = study_plan.compose
    monkeypatch.setattr(study_plan, "compose", lambda overrides: calls.append(tuple(overrides)) or real(overrides))
    cells = plan(load_study(_write(tmp_path, _doc(tmp_path))), tmp_path / "runs" / "t")
    jobs = [j for c in cells for j in (c.align, c.finetune) if j is not None]
    assert len(jobs) == 6 and len({j.name for j in jobs}) == 4  # two rows share each seed's alignment
    assert len(calls) == len(set(calls)) == 4  # each distinct job composed once
    for job in jobs:
        assert job.config == compose(list(job.overrides)) and job.config.run.name == job.name


def test_bad_study_files_are_refused_with_file_and_line(tmp_path):
    doc = _doc(tmp_path)
    doc["rows"]["sft -> sft"]["finetun"] = []
    with pytest.raises(ConfigError, match=r"s.yaml:\d+: unknown config key 'rows.sft -> sft.finetun'"):
        load_study(_write(tmp_path, doc))
    with pytest.raises(ConfigError, match=r"s.yaml:\d+: unknown config key 'axis'"):
        load_study(_write(tmp_path, dict(_doc(tmp_path), axis={})))
    with pytest.raises(ConfigError, match="reference 'nope' is not a row"):
        load_study(_write(tmp_path, _doc(tmp_path, reference="nope")))
    with pytest.raises(ConfigError, match="seeds"):
        load_study(_write(tmp_path, _doc(tmp_path, seeds=[1, 1])))
    # a bad override inside a row fails when the plan composes it, before any job runs
    bad = _doc(tmp_path)
    bad["rows"]["sft -> sft"]["finetune"] = ["method.finetune.tua=0.2"]
    with pytest.raises(ConfigError, match="method.finetune.tua"):
        plan(load_study(_write(tmp_path, bad)), tmp_path)
    study = load_study(_write(tmp_path, _doc(tmp_path)))
    assert parse_only("p=0.2,row=sft -> sft", study) == {"data.user.p": "0.2", "row": "sft -> sft"}
    for text in ("q=1", "row=nope", "p"):
        with pytest.raises(ConfigError, match="--only"):
            parse_only(text, study)


def test_alignments_are_shared_by_hash_across_rows_p_and_finetuning(tmp_path):
    doc = _doc(tmp_path, axes={"data.user.p": [0.1, 0.3]})
    doc["rows"]["sft -> antibody"] = {"align": ["method.align.method=sft"],
                                      "finetune": ["method.finetune.weighting=likelihood_ratio"]}
    doc["rows"]["antibody -> sft"] = {"align": ["method.align.method=antibody"],
                                      "finetune": ["method.finetune.weighting=uniform"]}
    study = load_study(_write(tmp_path, doc))
    cells = plan(study, tmp_path / "runs" / "t")
    assert len(cells) == 4 * 2 * 2  # rows x p x seeds
    jobs = jobs_of(cells)
    aligns = [j for j in jobs if j.stage is Stage.ALIGN]
    # one SFT and one Antibody alignment per seed, whatever p or the fine-tuning method
    assert len(aligns) == 2 * 2
    finetunes = [j for j in jobs if j.stage is Stage.FINETUNE]
    assert len(finetunes) == 3 * 2 * 2 and len({j.key for j in finetunes}) == len(finetunes)
    by_row = {}
    for c in cells:
        by_row.setdefault((c.row, c.seed), set()).add(c.align.key)
    assert by_row[("sft -> sft", 1)] == by_row[("sft -> antibody", 1)] == by_row[("sft alignment alone", 1)]
    assert by_row[("sft -> sft", 1)] != by_row[("sft -> sft", 2)] != by_row[("antibody -> sft", 2)]
    # the key leaves out what alignment does not read, and nothing it does
    a = compose(["experiment=tiny", "method.align.method=sft"])
    assert align_key(a) == align_key(compose(["experiment=tiny", "method.align.method=sft", "data.user.p=0.05",
                                              "method.finetune.tau=0.3", "eval.judge=tfidf", "run.name=x"]))
    for other in ("method.align.lr=0.01", "data.eval.n_harmful=6", "run.seed=7", "model.lora.r=2"):
        assert align_key(compose(["experiment=tiny", "method.align.method=sft", other])) != align_key(a), other


def test_alignment_splits_do_not_read_the_upload_settings(tiny_cfg):
    """Why `align_key` may leave data.user out: the alignment stage's splits are the same
    whatever the upload's p and n (the builder serves the user's demands last)."""
    from antibody.app.stages import new_datamodule
    from antibody.data.plan import Split
    from antibody.models import load_tokenizer

    tok = load_tokenizer(tiny_cfg.model)
    uids = []
    for over in (["data.user.p=0.1", "data.user.n=12"], ["data.user.p=0.5", "data.user.n=24"]):
        cfg = compose(["experiment=tiny", f"run.output_dir={tiny_cfg.run.output_dir}", *over])
        dm = new_datamodule(cfg, tok, Stage.ALIGN)
        dm.prepare_data()
        dm.setup("fit")
        uids.append([[r.uid for r in dm.records(s)] for s in (Split.ALIGNMENT, Split.HARMFUL)])
    assert uids[0] == uids[1]


def test_a_study_runs_resumes_and_filters(tmp_path, capsys):
    comparison = {"question": "aligned model alone vs attacked", "a": "sft alignment alone", "b": "sft -> sft",
                  "metric": "{task}/accuracy"}
    path = _write(tmp_path, _doc(tmp_path, comparisons=[comparison]))
    assert main(["study", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 cells, 4 jobs (0 done, 0 resumable, 4 to do)" in out
    # a subset first: one seed
    assert main(["study", str(path), "--only", "seed=1"]) == 0
    root = tmp_path / "runs" / "t"
    first = json.loads((root / "results.json").read_text())
    states = {(c["row"], c["seed"]): c["state"] for c in first["cells"]}
    assert states == {("sft -> sft", 1): "evaluated", ("sft alignment alone", 1): "evaluated",
                      ("sft -> sft", 2): "pending", ("sft alignment alone", 2): "pending"}
    assert first["jobs_trained_this_invocation"] == 2 and first["jobs_evaluated_this_invocation"] == 2
    # then the rest: the finished seed is reused, not redone
    assert main(["study", str(path)]) == 0
    second = json.loads((root / "results.json").read_text())
    assert second["jobs_trained_this_invocation"] == 2 and second["jobs_evaluated_this_invocation"] == 2
    assert all(c["state"] == "evaluated" for c in second["cells"])
    assert main(["study", str(path)]) == 0
    third = json.loads((root / "results.json").read_text())
    assert third["jobs_trained_this_invocation"] == 0 and third["jobs_evaluated_this_invocation"] == 0
    table = (root / "table.md").read_text()
    assert "| sft -> sft | 0.2 | 2 |" in table and "Paired HS differences to `sft -> sft`" in table
    # the file's named comparison, per seed, on the task the experiment evaluates
    named = third["named_comparisons"]
    assert [(c["seed"], c["metric"]) for c in named] == [(1, "arithmetic/accuracy"), (2, "arithmetic/accuracy")]
    assert "| aligned model alone vs attacked | arithmetic/accuracy |" in table
    assert (root / "results.png").stat().st_size > 0
    assert main(["study", str(path), "--dry-run"]) == 0
    assert "4 cells, 4 jobs (4 done, 0 resumable, 0 to do)" in capsys.readouterr().out
    # --report rewrites the results from disk, training and evaluating nothing
    (root / "results.json").unlink()
    (root / "table.md").unlink()
    assert main(["study", str(path), "--report"]) == 0
    fourth = json.loads((root / "results.json").read_text())
    assert fourth["summary"] == third["summary"] and fourth["jobs_trained_this_invocation"] == 0
    assert (root / "table.md").read_text() == table


def test_cells_run_to_their_evaluation_one_after_another(tmp_path, monkeypatch):
    """A study stopped mid-way leaves finished cells (align, fine-tune, evaluation) rather
    than every alignment and no evaluation; results.json is rewritten after each cell."""
    from antibody.app.study import run as study_app

    calls = []
    monkeypatch.setattr(study_app, "train_job", lambda job, cache=None: calls.append(("train", job.name)) or True)

    def evaluate(job, cache):
        calls.append(("eval", job.name))
        calls.append(("results", len(json.loads((root / "results.json").read_text())["cells"]))
                     if (root / "results.json").is_file() else ("results", None))
        return True

    monkeypatch.setattr(study_app, "evaluate_job", evaluate)
    study = load_study(_write(tmp_path, _doc(tmp_path)))
    root = tmp_path / "runs" / "t"
    cells = plan(study, root)
    study_app.run_study(study, root, cells, cells)
    by_seed = {s: next(c for c in cells if c.seed == s and c.finetune) for s in (1, 2)}
    a1, f1 = by_seed[1].align.name, by_seed[1].finetune.name
    a2, f2 = by_seed[2].align.name, by_seed[2].finetune.name
    assert calls == [("train", a1), ("train", f1), ("eval", f1), ("results", None),
                     ("train", a2), ("train", f2), ("eval", f2), ("results", 4),
                     ("eval", a1), ("results", 4), ("eval", a2), ("results", 4)]


def _fake_cell(root: Path, job: str, row: str, seed: int, hs_outcomes: list[bool], fa: float) -> dict:
    preds = root / job / "eval" / "predictions"
    preds.mkdir(parents=True)
    (preds / "harmful.jsonl").write_text("".join(
        json.dumps({"uid": f"u{i}", "verdict": v}) + "\n" for i, v in enumerate(hs_outcomes)))
    hs = sum(hs_outcomes) / len(hs_outcomes)
    return {"row": row, "data.user.p": 0.2, "seed": seed, "job": job, "state": "evaluated",
            "metrics": {"harmful/harmful_score": hs, "FA": fa}, "n": {"harmful/harmful_score": len(hs_outcomes)}}


def _pm_text(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def test_summary_is_mean_and_sample_std_over_seeds_and_pairs_by_seed(tmp_path):
    outcomes = {("ref", 1): [1, 1, 0, 0], ("ref", 2): [1, 1, 1, 0], ("ref", 3): [0, 1, 0, 0],
                ("new", 1): [0, 1, 0, 0], ("new", 2): [0, 0, 0, 0], ("new", 3): [0, 1, 0, 1]}
    fas = {("ref", 1): 0.1, ("ref", 2): 0.3, ("ref", 3): 0.2, ("new", 1): 0.2, ("new", 2): 0.2, ("new", 3): 0.5}
    cells = [_fake_cell(tmp_path, f"{r}-{s}", r, s, [bool(x) for x in o], fas[r, s]) for (r, s), o in outcomes.items()]
    results = StudyResults.from_json({"study": "fake", "axes": ["data.user.p"], "cells": cells, "reference": "ref",
                                      "jobs": 6})
    summarise(results, tmp_path)
    out = results.to_json()
    by_row = {s["row"]: s for s in out["summary"]}
    for row in ("ref", "new"):
        hs = [sum(outcomes[row, s]) / 4 for s in (1, 2, 3)]
        assert by_row[row]["harmful/harmful_score"]["mean"] == pytest.approx(statistics.fmean(hs))
        assert by_row[row]["harmful/harmful_score"]["std"] == pytest.approx(statistics.stdev(hs))
        assert by_row[row]["FA"]["mean"] == pytest.approx(statistics.fmean(fas[row, s] for s in (1, 2, 3)))
    from antibody.app.study.plots import plot
    from antibody.app.study.report import study_table

    plot(results, tmp_path / "results.png")
    assert (tmp_path / "results.png").stat().st_size > 0
    assert "| new | 0.2 | 3 |" in study_table(results)
    (paired,) = out["paired"]
    diffs = [(sum(outcomes["new", s]) - sum(outcomes["ref", s])) / 4 for s in (1, 2, 3)]
    assert paired["row"] == "new" and paired["diff"]["mean"] == pytest.approx(statistics.fmean(diffs))
    assert paired["diff"]["std"] == pytest.approx(statistics.stdev(diffs)) and len(paired["p_values"]) == 3
    # the interval by hand: mean ± t(0.975, 2) x sd / sqrt(3), t(0.975, 2) = 4.302653
    half = 4.302653 * statistics.stdev(diffs) / 3 ** 0.5
    assert paired["ci95"] == pytest.approx([statistics.fmean(diffs) - half, statistics.fmean(diffs) + half], abs=1e-6)
    lo, hi = (100 * x for x in paired["ci95"])
    assert f"| new | 0.2 | {_pm_text(diffs)} | [{lo:+.1f}, {hi:+.1f}] |" in study_table(results)


def test_the_studys_compute_counts_each_finished_job_once(tmp_path):
    """Training minutes are steps x the run's median s/step (a run resumed across sessions
    counts whole), evaluation minutes the models' wall times; shared alignments count once."""
    from antibody.app.study.report import compute, compute_line

    runs = {"align-a": ("align", 40, 6.0, 2), "ft-1": ("finetune", 30, 4.0, 2), "ft-2": ("finetune", 30, 5.0, 16),
            "align-b": ("align", 40, 9.0, 2)}  # align-b: unfinished, no metrics.json
    for name, (stage, steps, sps, cpus) in runs.items():
        (tmp_path / name / "eval").mkdir(parents=True)
        if name != "align-b":
            (tmp_path / name / "metrics.json").write_text(json.dumps(
                {"stage": stage, "steps": steps, "seconds_per_step": sps, "cpu_count": cpus}))
    (tmp_path / "ft-1" / "eval" / "metrics.json").write_text(json.dumps({"eval_seconds": 120.0}))
    (tmp_path / "align-a" / "eval" / "metrics.json").write_text(json.dumps({"eval_seconds": 60.0}))
    cells = [{"job": "ft-1", "align_job": "align-a"}, {"job": "ft-2", "align_job": "align-a"},
             {"job": "align-a", "align_job": "align-a"}, {"job": "ft-3", "align_job": "align-b"}]
    cost = compute(StudyResults.from_json({"cells": cells}), tmp_path)
    c = cost.to_json()
    assert c["train"]["align"] == {"jobs": 1, "minutes": pytest.approx(40 * 6.0 / 60)}
    assert c["train"]["finetune"] == {"jobs": 2, "minutes": pytest.approx((30 * 4.0 + 30 * 5.0) / 60)}
    assert c["eval"] == {"jobs": 2, "minutes": pytest.approx(3.0)} and c["cpu_counts"] == [2, 16]
    total = 40 * 6.0 / 60 + (30 * 4.0 + 30 * 5.0) / 60 + 3.0
    assert f"{total:.1f} min in all, on machines with 2/16 CPU cores" in compute_line(cost)


def test_a_studys_plots_reach_its_results_page_as_committed_files(tmp_path):
    """runs/ is never committed, so `report` copies the study's plots into FIGURES_DIR beside
    the results page and shows them in the block; the weights plot exists only while a row weights."""
    from antibody.app.report import default_page
    from antibody.app.study.plots import FIGURES_DIR, figure_name, write_figures

    study = tmp_path / "runs" / "fake"
    cells = [_fake_cell(study, f"{r}-{s}", r, s, [True, s == 2, False], 0.1 * s) for r in ("ref", "new") for s in (1, 2)]
    typed = StudyResults.from_json({"study": "fake", "axes": ["data.user.p"], "seeds": [1, 2], "cells": cells,
                                    "reference": "ref", "jobs": 4})
    summarise(typed, study)
    results = typed.to_json()
    readme = tmp_path / default_page("study-fake-results")  # the page, named on the command line
    readme.parent.mkdir(parents=True)
    readme.write_text("# x\n<!-- study-fake-results:start -->\nold\n<!-- study-fake-results:end -->\n")
    figures = readme.parent / FIGURES_DIR
    shown = {f: f"![study fake: {f}]({(FIGURES_DIR / figure_name('fake', f + '.png')).as_posix()})"
             for f in ("results", "weights")}

    def report(res: dict) -> str:
        (study / "results.json").write_text(json.dumps(res))
        write_figures(StudyResults.from_json(res), study)
        assert main(["report", str(study / "results.json"), str(readme)]) == 0
        return readme.read_text()

    # a uniform weighting's weight x B is not exactly 1 when the last batch is short: no plot
    for s in results["summary"]:
        s.update({"weighting": "uniform", "weights/harmful_x_batch": {"mean": 1.01, "std": 0.0, "seeds": 2}})
    text = report(results)
    assert shown["results"] in text and "weights.png" not in text and "Weights (mean weight" not in text
    assert (figures / figure_name("fake", "results.png")).read_bytes() == (study / "results.png").read_bytes()
    assert not (figures / figure_name("fake", "weights.png")).exists()
    # a weighted row: its sources' weights and the detector's AUROC get their own plot
    weighted = json.loads(json.dumps(results))
    row = next(s for s in weighted["summary"] if s["row"] == "new")
    row["weighting"] = "likelihood_ratio"
    row["weights/harmful_x_batch"] = {"mean": 0.2, "std": 0.05, "seeds": 2}
    row["weights/benign_prose_x_batch"] = {"mean": 1.6, "std": 0.1, "seeds": 2}
    row["detector/auroc_neg_ratio"] = {"mean": 0.7, "std": 0.02, "seeds": 2}
    text = report(weighted)
    assert shown["weights"] in text
    assert (figures / figure_name("fake", "weights.png")).read_bytes() == (study / "weights.png").read_bytes()
    # and when no row weights any more, the old plot goes from the study and from the page
    text = report(results)
    assert "weights.png" not in text and not (figures / figure_name("fake", "weights.png")).exists()
    assert not (study / "weights.png").exists() and text.count("study-fake-results:start") == 1


PAPER = sorted((Path(__file__).parent.parent / "conf" / "experiment" / "paper").glob("*.yaml"))


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_paper_experiments_compose_with_the_released_settings_and_fit_the_datasets(path):
    """Each paper experiment composes (nothing is loaded), keeps the released scripts'
    settings and asks for no more rows than the real datasets hold."""
    import math

    from antibody.config.sizes import KNOWN_SIZES, size_problems

    cfg = compose([f"experiment=paper/{path.stem}"])
    assert cfg.model.source.value == "hub" and cfg.data.prompt_format.value == "alpaca"
    assert (cfg.model.lora.r, cfg.model.lora.alpha) == (32, 4)
    assert sorted(cfg.model.lora.target_modules) == ["k_proj", "q_proj", "v_proj"]
    assert cfg.eval.judge.value == "beaver-dam" and cfg.eval.judge_max_length == 256
    assert (cfg.method.align.lr, cfg.method.finetune.lr) == (5e-4, 1e-5)
    # 20 epochs over the 5000 alignment rows and over the n = 1000 upload rows
    assert cfg.method.align.max_steps == math.ceil(20 * cfg.data.alignment.n_harmful / cfg.data.align_batch_size)
    assert cfg.method.finetune.max_steps == math.ceil(20 * cfg.data.user.n / cfg.data.finetune_batch_size)
    known = KNOWN_SIZES[cfg.task.name]
    assert cfg.data.paths[cfg.task.name.value] == known.hub_ids[0]  # the current hub id
    assert cfg.data.eval.n_task <= known.eval and cfg.data.eval.n_harmful <= 700
    assert size_problems(cfg) == []


def test_a_config_larger_than_its_hub_dataset_fails_when_composed(tmp_path):
    with pytest.raises(ConfigError, match=r"data.eval.n_task=1000 exceeds the 872 rows of sst2's validation split"):
        compose(["data=beavertails", "task=sst2"])
    with pytest.raises(ConfigError, match=r"data.eval.n_harmful=701 exceeds the 700 prompts"):
        compose(["data=beavertails", "task=gsm8k", "data.eval.n_harmful=701"])
    with pytest.raises(ConfigError, match="need 7600 gsm8k rows, more than its train split's 7473"):
        compose(["data=beavertails", "task=gsm8k", "data.user.n=9500"])
    # a local copy is not the hub dataset: its size is checked when it is read
    compose(["data=beavertails", "task=sst2", f"data.paths.sst2={tmp_path / 'sst2.jsonl'}"])


def test_weight_shares_and_detector_aurocs_of_a_weighted_run(tmp_path):
    """What the study table and a trial's summary report of a weighted fine-tuning run: the
    harmful rows' mean weight x batch size and per benign source, and the detector AUROCs."""
    from antibody.app.study.report import weights_and_detector
    from antibody.config import to_yaml

    cfg = compose(["experiment=tiny"])  # finetune_batch_size 4
    run = tmp_path / "ft-x"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(cfg))
    (run / "metrics.json").write_text(json.dumps({"detector": {"auroc_neg_ratio": 0.7}}))
    rows = [("h1", True, "generated_harmful", 0.05), ("h2", True, "generated_harmful", 0.15),
            ("a1", False, "arithmetic", 0.30),
            ("a2", False, "arithmetic", 0.20), ("p1", False, "benign_prose", 0.45)]
    (run / "weights.jsonl").write_text("".join(json.dumps({"uid": u, "is_harmful": h, "source": s, "w": w}) + "\n"
                                               for u, h, s, w in rows))
    out = weights_and_detector(run)
    assert out["weights/harmful_x_batch"] == pytest.approx(4 * 0.10)
    assert out["rows/harmful_at_least_half"] == 0.5  # 4 x 0.15 = 0.6 counts, 4 x 0.05 does not
    assert out["weights/arithmetic_x_batch"] == pytest.approx(4 * 0.25)
    assert out["weights/benign_prose_x_batch"] == pytest.approx(4 * 0.45)
    assert out["detector/auroc_neg_ratio"] == 0.7
    assert weights_and_detector(tmp_path / "missing") == {}


def test_the_study_notebook_runs_on_a_studys_outputs(tmp_path, monkeypatch):
    """notebooks/inspect_study.ipynb executes (nbclient) on a study folder: results.json as
    the study command writes it and one weighted run's weights.jsonl."""
    import nbformat
    from nbclient import NotebookClient

    from antibody.app.study.report import summarise

    cells = [_fake_cell(tmp_path, f"{r}-{s}", r, s, [True, False, s == 2], 0.1 * s)
             for r in ("ref", "new") for s in (1, 2)]
    for c in cells:  # as cell_result records it; the notebook picks a run that weighted its rows
        c["weighting"] = "likelihood_ratio" if c["job"] == "new-1" else "uniform"
    # a uniform run listed first writes weights.jsonl too (share 0.5): it must not be the one shown
    (tmp_path / "ref-1" / "weights.jsonl").write_text("".join(
        json.dumps({"uid": f"u{i}", "is_harmful": i == 0, "w": 0.5}) + "\n" for i in range(2)))
    (tmp_path / "new-1" / "weights.jsonl").write_text("".join(
        json.dumps({"uid": f"{src}-{i}", "source": src, "is_harmful": i == 0, "w": w, "logp_y": ly,
                    "logp_refusal": lr}) + "\n"
        for i, (src, w, ly, lr) in enumerate((("harmful", 0.1, -1.0, -2.0), ("arithmetic", 0.5, -3.0, -4.0),
                                              ("arithmetic", 0.4, -2.0, -5.0)))))
    results = StudyResults.from_json({"study": "fake", "axes": ["data.user.p"], "seeds": [1, 2], "cells": cells,
                                      "reference": "ref"})
    summarise(results, tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(results.to_json()))
    monkeypatch.setenv("ANTIBODY_STUDY_DIR", str(tmp_path))
    nb = nbformat.read(Path(__file__).parent.parent / "notebooks" / "inspect_study.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "4 of 4 cells evaluated" in text and "harmful weight share 0.100" in text
    # the per-source terms of r: arithmetic's means over its two rows
    assert "mean log p(answer) -2.50  mean log p(refusal) -4.50" in text


def test_existing_studies_keep_their_job_names():
    """Finished runs are found again by these names (runs/embedded-main/align-09b8a1b4ab31, ...):
    a change to the plan, the keys or the schema must not rename them. Re-pinned on purpose
    when a default changes what a job trains: 2026-12, clipping at 1.0 in both stages and
    SFT keeping its alignment LoRA, Antibody's cosine_ema (docs/fidelity.md); 2026-12-08, the
    judge as the harmful-answer filter: runs trained before are not reused. A study that pins
    the old filter (`data.harmful_answer_filter=keyword`, left out of the YAML: config/upload.py,
    omit_when) finds the runs of before that change under their old names (the second list)."""
    pinned = [("embedded_main.yaml", "sft -> sft", 1, "align-155877a20379", "ft-671851fa48ef"),
              ("embedded_main.yaml", "sft -> benign-only control", 3, "align-c74573902c88", "ft-382269a45fb5"),
              ("weighting_mechanism.yaml", "refusals only / ratio", 1, "align-2b2371735866", "ft-af3363e2afb4"),
              ("tiny.yaml", "sft alignment alone", 2, "align-320be2383bf8", None)]
    before_judge = [("embedded_main.yaml", "sft -> sft", 1, "align-44b0fdea3393", "ft-d624a602774d"),
                    ("embedded_main.yaml", "sft -> benign-only control", 3, "align-2cd25bbdb90b", "ft-98a3d285c976"),
                    ("weighting_mechanism.yaml", "refusals only / ratio", 1, "align-7ade73e22b96", "ft-cfcb51078d9e"),
                    ("tiny.yaml", "sft alignment alone", 2, "align-76c8e3b96a17", None)]
    for pins, extra in ((pinned, []), (before_judge, ["data.harmful_answer_filter=keyword"])):
        for file, row, seed, align, finetune in pins:
            study = load_study(CONF / file)
            study = dataclasses.replace(study, fixed=[*study.fixed, *extra])
            (cell,) = plan(study, Path("runs") / study.name, {"row": row, "seed": str(seed)})
            assert (cell.align.name, cell.finetune and cell.finetune.name) == (align, finetune), (file, row, extra)


DEMO_JOBS = {
    "main": ["base", "align-sft", "align-antibody", "ft-sft-sft", "ft-sft-antibody", "ft-sft-benign",
             "ft-antibody-sft", "ft-antibody-antibody", "ft-antibody-benign"],
    "controls": ["align-sft", "ctl-sft-response_only-generated", "ctl-sft-refusal_only-generated",
                 "ctl-sft-response_only-pyrit", "ctl-sft-refusal_only-pyrit"],
    "baselines": ["align-sft", "ft-sft-sft", "ft-sft-benign", "align-booster", "ft-booster-sft", "align-vaccine",
                  "ft-vaccine-sft", "align-repnoise", "ft-repnoise-sft", "ft-sft-lisa", "ft-sft-safeinstr"],
}


@pytest.mark.parametrize("suite", list(DEMO_JOBS))
def test_demo_suites_are_study_files_with_the_demos_run_dirs(tmp_path, suite):
    """Each demo suite plans to the run dirs the hand-listed demo gave its jobs, so the models
    already trained in runs/demo/ are found again; rows sharing an alignment share its job."""
    from antibody.app.demo.run import demo_study

    study, root = demo_study([f"suite={suite}", f"run.output_dir={tmp_path}"])
    assert root == tmp_path / "demo" and study.suite == suite and study.probe_aligned
    cells = plan(study, root)
    assert [c.model_job.name for c in cells] == DEMO_JOBS[suite]
    for cell in cells:
        if cell.finetune:
            assert cell.align.name == "align-" + cell.finetune.name.split("-")[1]
            assert f"run.init_from={root / cell.align.name}" in cell.finetune.overrides
    assert len({c.align.key for c in cells if c.align and c.align.name == "align-sft"}) == 1
    # experiment=demo_quick: its own folder (run.name demo-quick), the same names
    quick, quick_root = demo_study([f"suite={suite}", "experiment=demo_quick", f"run.output_dir={tmp_path}"])
    assert quick_root == tmp_path / "demo-quick" and quick.experiment == "demo_quick"


def test_demo_jobs_compose_to_the_configs_their_runs_were_trained_with(tmp_path):
    """What `runs/demo/<job>/config.yaml` holds: the hand-listed demo composed experiment=demo,
    the run dir, then the job's overrides; the study file's jobs compose to the same config
    (config_matches would otherwise refuse the finished runs)."""
    from antibody.app.demo.run import demo_study
    from antibody.config import to_yaml

    study, root = demo_study([f"run.output_dir={tmp_path}"])
    jobs = {j.name: j for c in plan(study, root) for j in (c.align, c.finetune, c.base) if j}
    init = f"run.init_from={root / 'align-antibody'}"
    legacy = {"base": [], "align-antibody": ["method.align.method=antibody"],
              "ft-antibody-benign": ["method.finetune.weighting=uniform", "data.user.benign_only=true", init],
              "ft-antibody-antibody": ["method.finetune.weighting=likelihood_ratio", init]}
    for name, overrides in legacy.items():
        want = compose(["experiment=demo", f"run.output_dir={root}", f"run.name={name}", *overrides])
        assert to_yaml(compose(list(jobs[name].overrides))) == to_yaml(want), name
    assert jobs["base"].stage is None and jobs["base"].overrides[-1] == "run.name=base"


def test_rows_may_name_their_run_dirs_and_train_nothing(tmp_path):
    doc = _doc(tmp_path, seeds=[1], reference=None)
    doc["rows"] = {
        "base": {"align": None, "finetune": None, "name": "base"},
        "sft": {"align": ["method.align.method=sft"], "finetune": None, "name": "al"},
        "sft -> sft": {"align": ["method.align.method=sft"], "finetune": ["method.finetune.weighting=uniform"],
                       "align_name": "al", "name": "ft"},
        "hashed": {"align": ["method.align.method=antibody"], "finetune": None},
    }
    doc["comparisons"] = [{"question": "attack", "a": "sft -> sft", "b": "sft", "metric": "harmful/harmful_score"}]
    study = load_study(_write(tmp_path, doc))
    cells = plan(study, tmp_path)
    assert [c.model_job.name for c in cells][:3] == ["base", "al", "ft"]
    assert cells[3].model_job.name == f"align-{cells[3].align.key}"  # no name: the hash key
    assert cells[0].base.stage is None and cells[0].align is None and jobs_of(cells[:1]) == []
    assert study.comparisons[0].a == "sft -> sft"
    # one job, two names; one name, two jobs; names where a row has several cells
    two_names = dict(doc, rows=dict(doc["rows"], **{"sft -> sft": dict(doc["rows"]["sft -> sft"], align_name="x")}))
    with pytest.raises(ConfigError, match="several run dirs"):
        plan(load_study(_write(tmp_path, two_names)), tmp_path)
    one_name = dict(doc, rows=dict(doc["rows"], hashed={"align": ["method.align.method=antibody"], "finetune": None,
                                                         "name": "al"}))
    with pytest.raises(ConfigError, match="'al' is named for 2 different jobs"):
        plan(load_study(_write(tmp_path, one_name)), tmp_path)
    for bad, match in ((dict(doc, seeds=[1, 2]), "needs one cell per row"),
                       (dict(doc, rows=dict(doc["rows"], base={"align": None, "finetune": []})), "needs `finetune: null`"),
                       (dict(doc, comparisons=[{"question": "q", "a": "nope", "b": "sft"}]), "'nope' is not a row"),
                       (dict(doc, comparisons=[{"question": "q", "a": "sft", "b": "sft", "metrc": "x"}]),
                        r"unknown config key 'comparisons\[0\].metrc'")):
        with pytest.raises(ConfigError, match=match):
            load_study(_write(tmp_path, bad))


def test_a_named_run_trained_with_another_config_is_refused(tmp_path):
    """A name, unlike a hash key, does not say what a run trained: a finished run under the
    row's name is reused only if its config is the job's."""
    from antibody.app.study import run as study_app
    from antibody.config import to_yaml

    doc = _doc(tmp_path, seeds=[1], reference=None)
    doc["rows"] = {"sft": {"align": ["method.align.method=sft"], "finetune": None, "name": "al"}}
    study = load_study(_write(tmp_path, doc))
    root = tmp_path / "runs" / "t"
    (job,) = jobs_of(plan(study, root))
    run = root / "al"
    run.mkdir(parents=True)
    (run / "DONE").write_text("align\n")
    cfg = compose(list(job.overrides))
    (run / "config.yaml").write_text(to_yaml(cfg))
    assert study_app.train_job(job) is False  # the same config: reused
    assert study_app.dry_run([job], root, {})[0].state == "done"
    (run / "config.yaml").write_text(to_yaml(compose([*job.overrides, "method.align.lr=0.5"])))
    with pytest.raises(ConfigError, match="trained with a different config"):
        study_app.train_job(job)
    assert study_app.dry_run([job], root, {})[0].state == "config differs"


def test_step_costs_tell_repnoise_with_and_without_the_logit_lens_apart():
    """A dry run prices a job by finished runs with the same passes per step: RepNoise
    without the logit lens is not priced at the lens's cost."""
    from antibody.app.study.run import cost_key

    base = ["experiment=tiny", "method=repnoise"]
    with_lens = cost_key(compose(base), Stage.ALIGN)
    without = cost_key(compose([*base, "method.align.repnoise.logit_lens=false"]), Stage.ALIGN)
    assert with_lens != without and with_lens[:-1] == without[:-1]
    sft = compose(["experiment=tiny", "method=sft"])
    assert cost_key(sft, Stage.ALIGN)[-1] is None
    assert cost_key(sft, Stage.FINETUNE) == cost_key(compose(["experiment=tiny", "method=repnoise",
                                                              "method.finetune.merge_then_new_adapter=false"]),
                                                     Stage.FINETUNE)


def test_step_costs_tell_quantisation_and_precision_apart():
    """An nf4 or bf16 run's step cost does not price an fp32 job (nor the reverse)."""
    from antibody.app.study.run import cost_key

    base = ["experiment=tiny", "method=sft"]
    keys = {cost_key(compose([*base, *extra]), Stage.ALIGN)
            for extra in ([], ["model.quantization=nf4"], ["trainer.precision=bf16-mixed"], ["model.dtype=bfloat16"],
                          ["trainer.precision=bf16-mixed", "trainer.attention=eager"])}
    assert len(keys) == 5


def test_results_json_round_trips_through_the_types(tmp_path):
    """results.json is read into StudyResults and written back unchanged, key order included;
    a summary written before the weighting was recorded keeps its absence (weighted_rows then
    falls back on the weights)."""
    from antibody.app.study.report import named_over_seeds

    cells = [_fake_cell(tmp_path, f"{r}-{s}", r, s, [True, s == 2, False], 0.1 * s) for r in ("ref", "new")
             for s in (1, 2)]
    typed = StudyResults.from_json({"study": "fake", "axes": ["data.user.p"], "seeds": [1, 2], "cells": cells,
                                    "reference": "ref", "jobs": 4})
    summarise(typed, tmp_path)
    named = [{"question": "q", "metric": "harmful/harmful_score", "a": "x", "b": "y", "row_a": "new", "row_b": "ref",
              "data.user.p": 0.2, "seed": s, "rate_a": 0.1 * s, "rate_b": 0.3, "diff": 0.1 * s - 0.3, "p_value": 0.5}
             for s in (1, 2)]
    typed.named_comparisons, typed.named_paired = named, named_over_seeds(named, typed.axes)
    text = json.dumps(typed.to_json())
    assert json.dumps(StudyResults.from_json(json.loads(text)).to_json()) == text
    assert list(json.loads(text)) == ["kind", "study", "reference", "axes", "seeds", "cells", "seconds_this_invocation",
                                      "jobs", "jobs_trained_this_invocation", "jobs_evaluated_this_invocation",
                                      "summary", "comparisons", "paired", "named_comparisons", "named_paired"]
    old = json.loads(text)
    for s in old["summary"]:
        del s["weighting"]
    again = StudyResults.from_json(old)
    assert not any(s.weighting_recorded for s in again.summary)
    assert json.dumps(again.to_json()) == json.dumps(old)


def test_a_job_evicts_the_evaluation_tools_only_when_it_trains_on_an_accelerator(tmp_path, monkeypatch):
    """On a GPU the judge leaves before a training job; a finished job trains nothing, so the
    next evaluation keeps its judge."""
    import dataclasses

    from antibody.app import stages
    from antibody.app.study import run as study_app
    from antibody.config import to_yaml

    doc = _doc(tmp_path, seeds=[1], reference=None)
    doc["rows"] = {"sft": {"align": ["method.align.method=sft"], "finetune": None, "name": "al"}}
    study = load_study(_write(tmp_path, doc))
    root = tmp_path / "runs" / "t"
    (job,) = jobs_of(plan(study, root))
    cfg = compose(list(job.overrides))
    on_gpu = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, accelerator="gpu"))
    monkeypatch.setattr(study_app, "job_config", lambda j: on_gpu)
    trained = []
    monkeypatch.setattr(stages, "train_stage", lambda c, stage: trained.append(stage))
    tools = {("tools", "judge"): object(), ("records", "m"): []}
    assert study_app.train_job(job, tools) is True and trained and list(tools) == [("records", "m")]
    run = root / "al"
    run.mkdir(parents=True, exist_ok=True)
    (run / "DONE").write_text("align\n")
    (run / "config.yaml").write_text(to_yaml(on_gpu))
    tools = {("tools", "judge"): object()}
    assert study_app.train_job(job, tools) is False and list(tools) == [("tools", "judge")]
