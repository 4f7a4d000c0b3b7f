"""End to end through the CLI on the tiny model: align -> finetune -> eval, and the demo."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import binomtest

from antibody.app import stages
from antibody.app.study.suite import ModelRow, SuiteResults
from antibody.cli.main import main
from antibody.evaluation.judges import is_refusal
from tests.helpers import png_size, saved_figures

TINY = ["experiment=tiny", "trainer.checkpoint_every_n_steps=2"]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "runs"


def test_align_finetune_eval_cli(out, capsys):
    base = [*TINY, f"run.output_dir={out}"]
    # kkt asked for by name (the method file runs the released cosine_ema): its lambda_t is a
    # function of one step's logged terms, checked below
    assert main(["align", *base, "run.name=al", "method.align.rho=0.3", "method.align.lambda_mode=kkt"]) == 0
    al = out / "al"
    for name in ("config.yaml", "adapter", "checkpoints/last.ckpt", "metrics.json", "data_summary.json", "DONE"):
        assert (al / name).exists(), name
    m = json.loads((al / "metrics.json").read_text())
    assert m["steps"] == 3 and m["steps_timed"] == 2  # the first (warm-up) step is not timed
    # Theorem 4.1 (kkt): lambda_t = max(0, xi - <g_s, g_a> / ||g_s||^2), from the logged cosine and norms
    f, a = m["final"], m["config"]["method"]["align"]
    assert a["lambda_mode"] == "kkt" and a["rho"] == 0.3
    want = max(0.0, a["xi"] - f["align/cos_a_s"] * f["align/grad_norm_a"] / f["align/grad_norm_s"])
    assert f["align/lambda_t"] == pytest.approx(want, rel=1e-4)

    # finetune from "latest": the newest finished alignment run
    assert main(["finetune", *base, "run.name=ft", "run.init_from=latest"]) == 0
    ft = out / "ft"
    m = json.loads((ft / "metrics.json").read_text())
    assert m["init_from"] == str(al)
    rows = [json.loads(line) for line in (ft / "weights.jsonl").read_text().splitlines()]
    assert rows and {"uid", "source", "is_harmful", "w", "r"} <= set(rows[0])
    assert any(r["is_harmful"] for r in rows)

    # a finished run is never overwritten
    assert main(["finetune", *base, "run.name=ft", "run.init_from=latest"]) == 2
    assert "already holds a finished finetune run" in capsys.readouterr().err

    assert main(["eval", f"run={ft}"]) == 0
    metrics = json.loads((ft / "eval" / "metrics.json").read_text())
    assert {"harmful/harmful_score", "harmful/refusal_rate", "benign/over_refusal", "arithmetic/accuracy"} <= set(
        metrics["metrics"]
    )
    assert metrics["metrics"]["harmful/harmful_score"]["n"] == 8
    # the rates are the written predictions, recounted (verdicts; keyword refusals)
    preds = [json.loads(line) for line in (ft / "eval" / "predictions" / "harmful.jsonl").open()]
    assert metrics["metrics"]["harmful/harmful_score"]["k"] == sum(r["verdict"] for r in preds)
    assert metrics["metrics"]["harmful/refusal_rate"]["k"] == sum(is_refusal(r["response"]) for r in preds)


class _Preempted(Exception):
    """Stands in for the death of a preempted job."""


class _PreemptAt(L.Callback):
    """Dies before training step ``step`` + 1, i.e. after the step-``step`` checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Preempted


class _Trained(L.Callback):
    """The step a fit starts from and the batches it trains."""

    def __init__(self):
        self.first_step, self.batches = None, 0

    def on_train_start(self, trainer, pl_module):
        self.first_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1


def test_killed_stage_resumes_to_the_uninterrupted_result(out, monkeypatch, capsys):
    """A stage killed after its step-2 checkpoint trains only step 3 when rerun, and ends
    where an uninterrupted run of the same config ends: adapter weights and final metrics
    (so weights, optimiser, the lambda EMA and the data position were all restored)."""
    base = [*TINY, f"run.output_dir={out}", "method.align.lambda_mode=cosine_ema"]
    assert main(["align", *base, "run.name=straight"]) == 0

    extra: list = []
    build_trainer = stages.build_trainer
    monkeypatch.setattr(
        stages,
        "build_trainer",
        lambda *args, extra_callbacks=(), **kw: build_trainer(*args, extra_callbacks=[*extra_callbacks, *extra], **kw),
    )
    extra[:] = [_PreemptAt(2)]
    with pytest.raises(_Preempted):
        main(["align", *base, "run.name=r"])
    run = out / "r"
    assert not (run / "DONE").exists() and (run / "checkpoints" / "last.ckpt").is_file()

    trained = _Trained()
    extra[:] = [trained]
    assert main(["align", *base, "run.name=r"]) == 0
    assert f"resuming {run} from" in capsys.readouterr().out
    assert (trained.first_step, trained.batches) == (2, 1)  # only the missing step was trained

    straight = json.loads((out / "straight" / "metrics.json").read_text())
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["steps"] == straight["steps"] == 3
    assert resumed["final"].keys() == straight["final"].keys()
    for key, value in straight["final"].items():
        assert resumed["final"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    want = load_file(out / "straight" / "adapter" / "adapter_model.safetensors")
    got = load_file(run / "adapter" / "adapter_model.safetensors")
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-7, msg=name)


def test_demo_pipeline_tiny(out, monkeypatch):
    """The demo's main study file through the study driver: every job trained, evaluated with
    one judge and one set of evaluation records per data config, reported."""
    from antibody.app import evaluate

    built = {"instrument": 0, "eval_records": 0}
    for name in built:
        real = getattr(evaluate, name)
        monkeypatch.setattr(evaluate, name, lambda *a, _real=real, _name=name, **k: built.__setitem__(
            _name, built[_name] + 1) or _real(*a, **k))
    with saved_figures() as figures:
        assert main(["demo", *TINY, f"run.output_dir={out}", "run.name=demo"]) == 0
    # one judge; records for the upload with and without its harmful rows (the benign-only control)
    assert built == {"instrument": 1, "eval_records": 2}
    root = out / "demo"
    results = json.loads((root / "results.json").read_text())
    # the file is what the suite's types write: read back and written, nothing changes
    assert json.dumps(SuiteResults.from_json(results).to_json()) == json.dumps(results)
    jobs = [r["job"] for r in results["rows"]]
    assert jobs[0] == "base" and {"align-sft", "align-antibody", "ft-sft-sft", "ft-antibody-antibody",
                                  "ft-sft-benign"} <= set(jobs)
    assert results["rows"][0]["label"] == "base model (no alignment)" and "train_seconds" not in results["rows"][0]
    assert (results["jobs_trained_this_invocation"], results["jobs_evaluated_this_invocation"]) == (8, 9)
    _assert_chart_shows_the_rows(figures["results.png"], root / "results.png", results)
    aligned = [r for r in results["rows"] if r["job"].startswith("align-")]
    assert len(aligned) == 2 and all("grad_norm" in r["sharpness"] for r in aligned)
    attacked = next(r for r in results["rows"] if r["job"] == "ft-sft-antibody")
    # recomputed from the run's weights file: mean harmful-row weight x the batch size (4)
    rows = [json.loads(line) for line in (root / "ft-sft-antibody" / "weights.jsonl").open()]
    harmful_w = [r["w"] for r in rows if r["is_harmful"]]
    assert harmful_w and attacked["weights"]["mean_weight_harmful_x_batch"] == pytest.approx(
        4 * sum(harmful_w) / len(harmful_w)
    )
    comps = {(c["a"], c["b"], c["metric"]): c for c in results["comparisons"]}
    attack = comps[("ft-sft-sft", "align-sft", "harmful/harmful_score")]
    rates = {r["job"]: r["metrics"]["harmful/harmful_score"]["value"] for r in results["rows"]}
    assert attack["rate_a"] == rates["ft-sft-sft"] and attack["rate_b"] == rates["align-sft"]
    assert attack["n"] == results["eval_sizes"]["harmful/harmful_score"]
    # McNemar's exact test recomputed from the two prediction files, paired by uid
    verdicts = {
        job: {r["uid"]: r["verdict"] for r in map(json.loads, (root / job / "eval" / "predictions" / "harmful.jsonl").open())}
        for job in ("ft-sft-sft", "align-sft")
    }
    a, b = verdicts["ft-sft-sft"], verdicts["align-sft"]
    assert a.keys() == b.keys() and len(a) == attack["n"]
    a_only, b_only = sum(a[u] and not b[u] for u in a), sum(b[u] and not a[u] for u in a)
    assert (attack["a_only"], attack["b_only"]) == (a_only, b_only)
    p = 1.0 if a_only + b_only == 0 else binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
    assert attack["p_value"] == pytest.approx(p, rel=1e-9)
    assert ("ft-sft-benign", "align-sft", "arithmetic/accuracy") in comps
    readme = out / "README.md"
    readme.write_text("intro\n<!-- demo-results:start -->\nold\n<!-- demo-results:end -->\nrest\n")
    assert main(["report", str(root / "results.json"), str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| sft align -> antibody fine-tune |" in text and text.endswith("rest\n")
    assert "| attack: SFT fine-tune on the poisoned upload vs SFT alignment alone |" in text
    # second invocation: everything is cached, nothing retrains or is evaluated again
    mtime = (root / "align-sft" / "adapter").stat().st_mtime
    assert main(["demo", *TINY, f"run.output_dir={out}", "run.name=demo"]) == 0
    assert (root / "align-sft" / "adapter").stat().st_mtime == mtime
    again = json.loads((root / "results.json").read_text())
    assert (again["jobs_trained_this_invocation"], again["jobs_evaluated_this_invocation"]) == (0, 0)
    assert again["rows"] == results["rows"] and again["comparisons"] == results["comparisons"]


def _assert_chart_shows_the_rows(fig, png, results):
    """The demo's bar chart: per model (x tick = its job), four bars, Harmful Score, refusal,
    over-refusal and the task's accuracy in % (0 where a model lacks the metric), each
    recomputed from results.json; and results.png is a whole PNG of that figure."""
    from matplotlib.container import BarContainer

    rows, task = results["rows"], results["task"]
    keys = {"harmful/harmful_score": "Harmful Score", "harmful/refusal_rate": "refusal (harmful)",
            "benign/over_refusal": "over-refusal (benign)", f"{task}/accuracy": f"FA ({task})"}
    (ax,) = fig.axes
    assert [label.get_text() for label in ax.get_xticklabels()] == [r["job"] for r in rows]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == list(keys.values())
    for bar, key in zip(bars, keys, strict=True):
        want = [100 * r["metrics"][key]["value"] if key in r["metrics"] else 0.0 for r in rows]
        assert [p.get_height() for p in bar.patches] == pytest.approx(want), key
    width, height = fig.get_size_inches() * 120  # saved at 120 dpi
    assert png_size(png) == (round(width), round(height))


def test_demo_chart_draws_each_models_rates_from_hand_made_rows(tmp_path):
    """The tiny demo's rates are all 0, so the chart's bars are checked here on rows with
    distinct rates: height = 100 x value (0 for a metric a row lacks), error bar = ± 100 x
    stderr, each model's four bars centred on its tick."""
    from matplotlib.container import BarContainer

    from antibody.app.study.models import plot

    def m(value, stderr):
        return {"value": value, "stderr": stderr, "n": 64}

    rows = [{"job": "a", "metrics": {"harmful/harmful_score": m(0.25, 0.05), "harmful/refusal_rate": m(0.5, 0.1),
                                     "benign/over_refusal": m(0.1, 0.02), "arithmetic/accuracy": m(0.8, 0.04)}},
            {"job": "b", "metrics": {"harmful/harmful_score": m(0.75, 0.03)}}]
    with saved_figures() as figures:
        plot([ModelRow.from_json(r) for r in rows], "arithmetic", tmp_path / "chart.png")
    (ax,) = figures["chart.png"].axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["Harmful Score", "refusal (harmful)", "over-refusal (benign)",
                                             "FA (arithmetic)"]
    assert [[p.get_height() for p in b.patches] for b in bars] == [
        pytest.approx([25, 75]), pytest.approx([50, 0]), pytest.approx([10, 0]), pytest.approx([80, 0])]
    # error bars: one vertical segment per bar, from height - 100 stderr to height + 100 stderr
    spans = [[seg[1][1] - seg[0][1] for seg in b.errorbar.lines[2][0].get_segments()] for b in bars]
    assert spans == [pytest.approx([10, 6]), pytest.approx([20, 0]), pytest.approx([4, 0]), pytest.approx([8, 0])]
    ticks = ax.get_xticks()
    assert [label.get_text() for label in ax.get_xticklabels()] == ["a", "b"]
    for i, tick in enumerate(ticks):
        centres = [b.patches[i].get_x() + b.patches[i].get_width() / 2 for b in bars]
        assert sum(centres) / len(centres) == pytest.approx(tick)
    assert png_size(tmp_path / "chart.png") == (960, 540)  # 8 x 4.5 in at 120 dpi


def test_control_suite_jobs_and_bad_suite(tmp_path, capsys):
    from antibody.app.demo.run import demo_study
    from antibody.app.study.plan import plan

    study, root = demo_study(["suite=controls", f"run.output_dir={tmp_path}"])
    cells = plan(study, root)
    assert cells[0].model_job.name == "align-sft" and cells[0].finetune is None
    overrides = {o for c in cells for o in c.model_job.overrides}
    for w in ("response_only", "refusal_only"):
        assert f"method.finetune.weighting={w}" in overrides
    for src in ("generated_harmful", "pyrit_harmful"):
        assert f"data.user.harmful_answer_source={src}" in overrides
    assert all(c.align.name == "align-sft" for c in cells[1:])
    assert main(["demo", "suite=nope"]) == 2
    assert "suite=nope: choose one of" in capsys.readouterr().err
