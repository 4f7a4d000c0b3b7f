"""A study's results one line per model: the demo's tables (`suite` in the study file).

Each cell's model is a line (its label is the row's name) with its evaluation, its training
cost and weights, and the sharpness probe of an aligned model; then the study's named
paired comparisons and the Harmful Scores under every judge that scored the answers. Written
to `results.json` (suite main) or `results_<suite>.json` beside a bar chart, and rendered
into docs/results/ by `python -m antibody report` (app/report.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from antibody.app.rundir import write_json
from antibody.app.study.plan import Cell, job_config
from antibody.app.study.suite import ModelRow, SuiteResults
from antibody.config import Config, ConfigError
from antibody.config.study import StudyConfig


def results_stem(suite: str) -> str:
    return "results" if suite == "main" else f"results_{suite}"


def probe(cfg: Config, run_dir: Path, cache: dict) -> dict:
    """Sharpness probe of an aligned model on held-out harmful pairs: the upload's harmful
    rows, which no alignment run saw (the same rows for every aligned model, so the batches
    are built once per invocation, in `cache`)."""
    import torch

    from antibody.app.stages import build_datamodule
    from antibody.config import to_yaml
    from antibody.config.schema import EvalConfig, MethodConfig, RunConfig, Stage, TrainerConfig
    from antibody.data.collate import BatchCollator
    from antibody.data.plan import Split
    from antibody.methods import sharpness_probe
    from antibody.models import load_model, load_tokenizer

    key = ("probe-batches", to_yaml(dataclasses.replace(cfg, run=RunConfig(), method=MethodConfig(),
                                                        eval=EvalConfig(), trainer=TrainerConfig())))
    if key not in cache:
        # the alignment stage's DataModule: the upload's rows are the same in either stage, and
        # an adaptive attack's are not rewritten there (an aligned model has no aligned run to
        # start from; the probe needs harmful pairs no alignment saw, not the attack's rewrite)
        dm = build_datamodule(cfg, load_tokenizer(cfg.model), Stage.ALIGN)
        rows = [r for r in dm.encoded(Split.USER) if r.is_harmful]
        collate, size = BatchCollator(dm.pad_token_id), cfg.data.eval_batch_size
        cache[key] = (len(rows), [collate(rows[i : i + size]) for i in range(0, len(rows), size)])
    n_rows, batches = cache[key]
    model, _ = load_model(cfg.model, adapter_path=run_dir / "adapter")
    torch.manual_seed(cfg.run.seed)
    out = sharpness_probe(model, batches, cfg.method.align.rho)
    out["rows"] = n_rows
    out["rho"] = cfg.method.align.rho
    return out


def model_row(cell: Cell, root: Path) -> ModelRow:
    """The cell's model: evaluation metrics, training time and final weights, the weight
    summary of a weighted fine-tuning run, the sharpness probe."""
    from antibody.app.demo.tables import weight_summary

    run_dir = root / cell.model_job.name
    ev = json.loads((run_dir / "eval" / "metrics.json").read_text())
    row = ModelRow(cell.model_job.name, cell.row, ev["metrics"], ev.get("eval_seconds"))
    train = run_dir / "metrics.json"
    if train.is_file():
        tm = json.loads(train.read_text())
        row.train = {"train_seconds": tm.get("wall_seconds"), "seconds_per_step": tm.get("seconds_per_step"),
                     "detector": tm.get("detector"),
                     "final": {k: v for k, v in tm.get("final", {}).items() if "weight" in k}}
    weights = run_dir / "weights.jsonl"
    if weights.is_file():
        rows = [json.loads(line) for line in weights.read_text().splitlines() if line]
        row.weights = weight_summary(rows, job_config(cell.model_job).data.finetune_batch_size)
    sharpness = run_dir / "sharpness.json"
    if sharpness.is_file():
        row.sharpness = json.loads(sharpness.read_text())
    return row


def accuracy_task(cell: Cell) -> str:
    from antibody.evaluation.tasks import accuracy_task_for

    return accuracy_task_for(job_config(cell.model_job).task.name).name.value


def named_comparisons(study: StudyConfig, cells: list[Cell], root: Path) -> list[dict]:
    """The study's comparisons, for every (axis values, seed) whose two rows' models are
    evaluated: the paired difference, with the per-prompt outcomes re-checked against each
    model's metrics.json."""
    from antibody.evaluation.evaluator import read_predictions
    from antibody.evaluation.paired import paired_difference, paired_outcomes

    # axis values as text: a value may be a list (a list of sources), which cannot key a dict
    evaluated = {(c.row, str(c.values), c.seed): c for c in cells
                 if (root / c.model_job.name / "eval" / "metrics.json").is_file()}
    predictions: dict[tuple[str, str], list[dict]] = {}  # several comparisons share a file
    tasks: dict[str, str] = {}

    def preds(job: str, task_name: str) -> list[dict]:
        if (job, task_name) not in predictions:
            path = root / job / "eval" / "predictions" / f"{task_name}.jsonl"
            predictions[job, task_name] = read_predictions(path, repair=False)
        return predictions[job, task_name]

    out = []
    for comparison in study.comparisons:
        for (row, values, seed), a in evaluated.items():
            b = evaluated.get((comparison.b, values, seed))
            if row != comparison.a or b is None:
                continue
            if "{task}" in comparison.metric and a.model_job.name not in tasks:
                tasks[a.model_job.name] = accuracy_task(a)
            key = comparison.metric.format(task=tasks.get(a.model_job.name))
            task_name, metric = key.split("/", 1)
            ja, jb = a.model_job.name, b.model_job.name
            diff = paired_difference(*paired_outcomes(preds(ja, task_name), preds(jb, task_name), metric))
            for job, rate in ((ja, diff.rate_a), (jb, diff.rate_b)):
                stored = json.loads((root / job / "eval" / "metrics.json").read_text())["metrics"][key]["value"]
                if abs(stored - rate) > 1e-9:
                    raise ConfigError(f"{root / job}: predictions give {key} = {rate:.4f} but metrics.json says "
                                      f"{stored:.4f}; re-run `eval` for that run")
            labels = {} if study.suite else {**dict(a.values), "seed": seed}
            out.append({"question": comparison.question, "a": ja, "b": jb, "row_a": comparison.a,
                        "row_b": comparison.b, "metric": key, **labels,
                        **diff.to_dict()})
    return out


def _judge_summary(run_dir: Path) -> dict:
    """The judge every model was scored by (the driver re-judges stale evaluations), with its
    validation on the labelled data."""
    judge = json.loads((run_dir / "eval" / "metrics.json").read_text())["judge"]
    return {k: judge.get(k) for k in ("name", "version", "threshold", "validation", "incoherence_rule")}


def model_results(study: StudyConfig, root: Path, cells: list[Cell], counts: dict, seconds: float) -> SuiteResults:
    """results[_<suite>].json: one line per evaluated model, in the study's row order."""
    from antibody.app.judge.change import hs_by_judge

    done = [c for c in cells if (root / c.model_job.name / "eval" / "metrics.json").is_file()]
    rows = [model_row(c, root) for c in done]
    cfg = job_config(cells[0].model_job)
    results = SuiteResults(study.name, accuracy_task(cells[0]),
                           {key: m["n"] for key, m in rows[0].metrics.items()} if rows else {}, rows,
                           demo_seconds_this_invocation=seconds, jobs_trained_this_invocation=counts["trained"],
                           jobs_evaluated_this_invocation=counts["evaluated"], suite=study.suite)
    results.comparisons = named_comparisons(study, cells, root)
    if rows:
        results.judge = _judge_summary(root / rows[0].job)
        results.by_judge = hs_by_judge(root, [r.job for r in rows], results.comparisons, cfg.eval.judge_threshold)
    return results


def plot(rows: list[ModelRow], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("harmful/harmful_score", "Harmful Score"), ("harmful/refusal_rate", "refusal (harmful)"),
            ("benign/over_refusal", "over-refusal (benign)"), (f"{task}/accuracy", f"FA ({task})")]
    x = np.arange(len(rows))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(rows)), 4.5))
    for i, (key, name) in enumerate(keys):
        vals = [100 * (r.value(key) or 0.0) for r in rows]
        errs = [100 * r.metrics.get(key, {}).get("stderr", 0.0) for r in rows]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([r.job for r in rows], rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    ax.set_title("antibody demo: harmfulness, refusals and task accuracy per model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_models(root: Path, results: SuiteResults, final: bool = True) -> None:
    """The results file after every evaluation; at the end also the charts (the bars, and HS
    against FA per model: study.tradeoff) and the table."""
    from antibody.app.report import render
    from antibody.app.study.tradeoff import models_tradeoff

    stem = results_stem(results.suite or "main")
    data = results.to_json()
    write_json(root / f"{stem}.json", data)
    if final:
        plot(results.rows, results.task, root / f"{stem}.png")
        drawn = models_tradeoff(results, root / f"{stem}_tradeoff.png")
        print(render(data))
        print(f"[antibody] wrote {root / (stem + '.json')}, {root / (stem + '.png')}"
              + (f" and {root / (stem + '_tradeoff.png')}" if drawn else ""))
