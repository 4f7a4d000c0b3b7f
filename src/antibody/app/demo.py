"""`demo`: the whole attack-and-defence story on one config (default: the embedded model).

1. evaluate the base model; 2. align twice (SFT, Antibody); 3. fine-tune each on the same
poisoned upload with SFT and Antibody weighting, plus the benign-only control; 4. evaluate
every model; print a table, write `results.json` and a PNG bar chart.

Every job writes its own run dir under `runs/<run.name>/`; a finished job (DONE marker,
metrics.json) is skipped on a second run, so an interrupted demo resumes where it stopped.
All jobs share the data seed, so every fine-tuning run sees identical batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Optional

from antibody.app.arguments import pop_arg
from antibody.app.judge_change import hs_by_judge
from antibody.app.report import render, weight_summary
from antibody.app.rundir import RunDir, write_json
from antibody.config import Config, ConfigError, compose
from antibody.infra import progress


@dataclass(frozen=True)
class Job:
    """One model of the demo: how it is trained (stage overrides) and from what."""

    name: str
    label: str
    stage: Optional[str]  # "align" | "finetune" | None (base model)
    overrides: tuple[str, ...] = ()
    init_from: Optional[str] = None
    group: str = field(default="")


def demo_jobs() -> list[Job]:
    align = {
        "sft": ("method.align.method=sft",),
        "antibody": ("method.align.method=antibody",),
    }
    weighting = {
        "sft": ("method.finetune.weighting=uniform",),
        "antibody": ("method.finetune.weighting=likelihood_ratio",),
    }
    jobs = [Job("base", "base model (no alignment)", None, group="base")]
    for a, ov in align.items():
        jobs.append(Job(f"align-{a}", f"{a} alignment", "align", ov, group="aligned"))
    for a in align:
        for w, ov in weighting.items():
            jobs.append(Job(f"ft-{a}-{w}", f"{a} align -> {w} fine-tune", "finetune", ov,
                            init_from=f"align-{a}", group="attacked"))
        jobs.append(Job(f"ft-{a}-benign", f"{a} align -> benign-only control", "finetune",
                        ("method.finetune.weighting=uniform", "data.user.benign_only=true"),
                        init_from=f"align-{a}", group="control"))
    return jobs


def control_jobs() -> list[Job]:
    """Which term of the weights does the work? SFT alignment, then weighting by the
    response term alone and by the refusal term alone (analysis-only controls), each with
    harmful answers written by the base model and by humans (PyRIT)."""
    jobs = [Job("align-sft", "sft alignment", "align", ("method.align.method=sft",), group="aligned")]
    sources = {"generated": "generated_harmful", "pyrit": "pyrit_harmful"}
    for src_name, source in sources.items():
        for w in ("response_only", "refusal_only"):  # the full ratio: the main suite
            jobs.append(Job(
                f"ctl-sft-{w}-{src_name}", f"sft align -> {w} ({src_name} harmful answers)", "finetune",
                (f"method.finetune.weighting={w}", f"data.user.harmful_answer_source={source}"),
                init_from="align-sft", group="control-weights"))
    return jobs


def baseline_jobs() -> list[Job]:
    """The paper's baselines at demo size, one seed (a smoke test of each method's effect,
    not a claim). Alignment baselines are attacked by the SFT fine-tune of the main suite;
    fine-tuning baselines start from its SFT alignment. Every job fine-tunes the same
    poisoned upload with the same batches, and all keep training the alignment adapter
    (merge_then_new_adapter=false, as the main suite's runs), so that only the method
    differs from `ft-sft-sft`; the main suite's jobs are reused, not retrained."""
    sft_ft = ("method.finetune.weighting=uniform",)
    jobs = [Job("align-sft", "sft alignment", "align", ("method.align.method=sft",), group="aligned"),
            Job("ft-sft-sft", "sft align -> sft fine-tune", "finetune", sft_ft, init_from="align-sft",
                group="attacked"),
            Job("ft-sft-benign", "sft align -> benign-only control", "finetune",
                (*sft_ft, "data.user.benign_only=true"), init_from="align-sft", group="control")]
    align = {
        # Booster: its constant lambda and no refusal term (conf/method/booster.yaml)
        "booster": ("method.align.method=booster", "method.align.lambda_mode=constant", "method.align.lambda2=0.0"),
        "vaccine": ("method.align.method=vaccine",),
        "repnoise": ("method.align.method=repnoise",),
    }
    for a, ov in align.items():
        jobs.append(Job(f"align-{a}", f"{a} alignment", "align", ov, group="aligned"))
        jobs.append(Job(f"ft-{a}-sft", f"{a} align -> sft fine-tune", "finetune", sft_ft,
                        init_from=f"align-{a}", group="attacked"))
    for f in ("lisa", "safeinstr"):
        jobs.append(Job(f"ft-sft-{f}", f"sft align -> {f} fine-tune", "finetune",
                        (f"method.finetune.method={f}", *sft_ft), init_from="align-sft", group="attacked"))
    return jobs


@dataclass(frozen=True)
class Comparison:
    """A question the demo answers with a paired difference: metric of job A minus job B,
    on the same evaluation prompts. ``{task}`` in the metric stands for the accuracy task."""

    question: str
    a: str
    b: str
    metric: str


HS, FA, OVER = "harmful/harmful_score", "{task}/accuracy", "benign/over_refusal"

COMPARISONS = (
    Comparison("attack: SFT fine-tune on the poisoned upload vs SFT alignment alone", "ft-sft-sft", "align-sft", HS),
    Comparison("harmful rows vs ordinary fine-tuning: SFT fine-tune vs benign-only control", "ft-sft-sft",
               "ft-sft-benign", HS),
    Comparison("fine-tuning teaches the task: benign-only control vs SFT alignment", "ft-sft-benign", "align-sft", FA),
    Comparison("Antibody weighting vs SFT fine-tune (both after SFT alignment)", "ft-sft-antibody", "ft-sft-sft", HS),
    Comparison("task cost of Antibody weighting (after SFT alignment)", "ft-sft-antibody", "ft-sft-sft", FA),
    Comparison("Antibody vs SFT alignment, before any fine-tuning", "align-antibody", "align-sft", HS),
    Comparison("over-refusal of Antibody vs SFT alignment", "align-antibody", "align-sft", OVER),
    Comparison("Antibody vs SFT alignment, both attacked by SFT fine-tuning", "ft-antibody-sft", "ft-sft-sft", HS),
    Comparison("full Antibody (both stages) vs SFT -> SFT", "ft-antibody-antibody", "ft-sft-sft", HS),
    Comparison("task cost of full Antibody vs SFT -> SFT", "ft-antibody-antibody", "ft-sft-sft", FA),
    *(c for name in ("booster", "vaccine", "repnoise") for c in (
        Comparison(f"{name} vs SFT alignment, both attacked by SFT fine-tuning", f"ft-{name}-sft", "ft-sft-sft", HS),
        Comparison(f"task cost of {name} alignment (then SFT fine-tune)", f"ft-{name}-sft", "ft-sft-sft", FA),
        Comparison(f"over-refusal of {name} vs SFT alignment", f"align-{name}", "align-sft", OVER))),
    *(c for name in ("lisa", "safeinstr") for c in (
        Comparison(f"{name} vs SFT fine-tune (both after SFT alignment)", f"ft-sft-{name}", "ft-sft-sft", HS),
        Comparison(f"task cost of {name} (after SFT alignment)", f"ft-sft-{name}", "ft-sft-sft", FA))),
)


def compare(root: Path, comparisons: tuple[Comparison, ...], task: str, rows: list[dict]) -> list[dict]:
    """Paired differences for every comparison whose two jobs are among ``rows`` (this
    suite's `_row`s). The per-prompt outcomes are re-checked against each row's metrics."""
    from antibody.evaluation.evaluator import read_predictions
    from antibody.evaluation.paired import paired_difference, paired_outcomes

    metrics = {r["job"]: r["metrics"] for r in rows}
    predictions: dict[tuple[str, str], list[dict]] = {}  # several comparisons share a file

    def preds(job: str, task_name: str) -> list[dict]:
        if (job, task_name) not in predictions:
            path = root / job / "eval" / "predictions" / f"{task_name}.jsonl"
            predictions[job, task_name] = read_predictions(path, repair=False)
        return predictions[job, task_name]

    out = []
    for c in comparisons:
        if c.a not in metrics or c.b not in metrics:
            continue
        key = c.metric.format(task=task)
        task_name, metric = key.split("/", 1)
        a, b = paired_outcomes(preds(c.a, task_name), preds(c.b, task_name), metric)
        diff = paired_difference(a, b)
        for job, rate in ((c.a, diff.rate_a), (c.b, diff.rate_b)):
            stored = metrics[job][key]["value"]
            if abs(stored - rate) > 1e-9:
                raise ConfigError(f"{root / job}: predictions give {key} = {rate:.4f} but metrics.json says "
                                  f"{stored:.4f}; re-run `eval` for that run")
        out.append({"question": c.question, "a": c.a, "b": c.b, "metric": key, **diff.to_dict()})
    return out


class Suite(StrEnum):
    MAIN = "main"
    CONTROLS = "controls"
    BASELINES = "baselines"


SUITES = {Suite.MAIN: demo_jobs, Suite.CONTROLS: control_jobs, Suite.BASELINES: baseline_jobs}


def job_config(args: list[str], job: Job, root: Path) -> Config:
    extra = [f"run.output_dir={root}", f"run.name={job.name}", *job.overrides]
    if job.init_from:
        extra.append(f"run.init_from={root / job.init_from}")
    return compose([*args, *extra])


def _train(cfg: Config, job: Job) -> bool:
    """Train the job's model unless a finished run with this exact config exists; True if
    it trained now."""
    from antibody.app.rundir import config_matches
    from antibody.app.stages import Stage, train_stage

    run = RunDir(Path(cfg.run.output_dir) / cfg.run.name)
    if run.done:
        # a cached model is reused only if it was trained with this config
        if not config_matches(run.config_path, cfg):
            raise ConfigError(
                f"{run.path} was trained with a different config than this demo asks for; "
                "use another run.name for the demo (nothing was overwritten)"
            )
        return False
    train_stage(cfg, Stage(job.stage))
    return True


def _probe(cfg: Config, run: RunDir) -> dict:
    """Sharpness probe of an aligned model on held-out harmful pairs: the upload's harmful
    rows, which no alignment run saw (the same rows for every aligned model)."""
    import torch

    from antibody.app.stages import build_datamodule
    from antibody.config.schema import Stage
    from antibody.data.collate import BatchCollator
    from antibody.data.plan import Split
    from antibody.methods import sharpness_probe
    from antibody.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, Stage.FINETUNE)
    rows = [r for r in dm.encoded(Split.USER) if r.is_harmful]
    collate = BatchCollator(dm.pad_token_id)
    size = cfg.data.eval_batch_size
    batches = [collate(rows[i : i + size]) for i in range(0, len(rows), size)]
    model, _ = load_model(cfg.model, adapter_path=run.adapter)
    torch.manual_seed(cfg.run.seed)
    out = sharpness_probe(model, batches, cfg.method.align.rho)
    out["rows"] = len(rows)
    out["rho"] = cfg.method.align.rho
    return out


def _row(job: Job, cfg: Config, root: Path) -> dict:
    run_dir = root / job.name
    ev = json.loads((run_dir / "eval" / "metrics.json").read_text())
    metrics = ev["metrics"]
    row = {"job": job.name, "label": job.label, "group": job.group, "metrics": metrics,
           "eval_seconds": ev.get("eval_seconds")}
    train = run_dir / "metrics.json"
    if train.is_file():
        tm = json.loads(train.read_text())
        row["train_seconds"] = tm.get("wall_seconds")
        row["seconds_per_step"] = tm.get("seconds_per_step")
        row["detector"] = tm.get("detector")
        row["final"] = {k: v for k, v in tm.get("final", {}).items() if "weight" in k}
    weights = run_dir / "weights.jsonl"
    if weights.is_file():
        rows = [json.loads(line) for line in weights.read_text().splitlines() if line]
        row["weights"] = weight_summary(rows, cfg.data.finetune_batch_size)
    probe = run_dir / "sharpness.json"
    if probe.is_file():
        row["sharpness"] = json.loads(probe.read_text())
    return row


def _judge_summary(run_dir: Path) -> dict:
    """The judge every job of the suite was scored by (the demo re-judges stale jobs), with
    its validation on the labelled data."""
    judge = json.loads((run_dir / "eval" / "metrics.json").read_text())["judge"]
    return {k: judge.get(k) for k in ("name", "version", "threshold", "validation", "incoherence_rule")}


def _value(row: dict, key: str) -> Optional[float]:
    m = row["metrics"].get(key)
    return None if m is None else m["value"]


def plot(rows: list[dict], task: str, path: Path) -> None:
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
        vals = [100 * (_value(r, key) or 0.0) for r in rows]
        errs = [100 * r["metrics"].get(key, {}).get("stderr", 0.0) for r in rows]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, vals, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels([r["job"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("antibody demo: harmfulness, refusals and task accuracy per model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo_command(args: list[str]) -> int:
    from antibody.app.evaluate import evaluate_model, instrument, is_current
    from antibody.evaluation.tasks import accuracy_task_for

    value, args = pop_arg(args, "suite")  # the demo's own argument, not a config key
    if value is not None and value not in {s.value for s in Suite}:
        raise ConfigError(f"suite={value}: choose one of {[s.value for s in Suite]}")
    suite = Suite(value) if value is not None else Suite.MAIN
    # the tuned demo sizes unless the caller names another experiment (e.g. demo_quick)
    has_experiment = any(a.startswith("experiment=") for a in args)
    experiment_args = list(args) if has_experiment else ["experiment=demo", *args]
    base_cfg = compose(experiment_args)
    root = Path(base_cfg.run.output_dir) / base_cfg.run.name
    root.mkdir(parents=True, exist_ok=True)
    jobs = SUITES[suite]()
    stem = "results" if suite is Suite.MAIN else f"results_{suite.value}"
    task = accuracy_task_for(base_cfg.task.name).name.value
    t_start = time.perf_counter()
    trained = evaluated = 0  # jobs this invocation ran (the rest were cached)
    with progress.task("demo", total=2 * len(jobs) + 2) as overall:
        for job in jobs:  # training first: evaluation below reuses the same models
            cfg = job_config(experiment_args, job, root)
            if job.stage is not None:
                overall.update(description=f"train {job.name}")
                trained += _train(cfg, job)
            overall.advance()
        tools = None  # the judge and its validation, built once for every job
        for job in jobs:
            cfg = job_config(experiment_args, job, root)
            run_dir = root / job.name
            overall.update(description=f"eval {job.name}")
            if tools is None:
                from antibody.models import load_tokenizer

                tools = instrument(cfg, load_tokenizer(cfg.model))
            if not is_current(run_dir / "eval" / "metrics.json", tools):
                # new jobs, and finished ones judged by another judge or rule (their stored
                # answers are judged again, nothing is regenerated)
                evaluated += 1
                adapter = run_dir / "adapter" if job.stage is not None else None
                from antibody.app.stages import read_base_adapters

                evaluate_model(cfg, adapter, run_dir / "eval",
                               base_adapters=tuple(read_base_adapters(run_dir)), tools=tools)
            if job.stage == "align" and not (run_dir / "sharpness.json").is_file():
                write_json(run_dir / "sharpness.json", _probe(cfg, RunDir(run_dir)))
            overall.advance()
        overall.update(description="report")
        rows = [_row(job, job_config(experiment_args, job, root), root) for job in jobs]
        results = {
            "config": base_cfg.run.name,
            "task": task,
            "eval_sizes": {key: m["n"] for key, m in rows[0]["metrics"].items()},
            "rows": rows,
            "demo_seconds_this_invocation": time.perf_counter() - t_start,
            "jobs_trained_this_invocation": trained,
            "jobs_evaluated_this_invocation": evaluated,
            "suite": suite.value,
        }
        results["comparisons"] = compare(root, COMPARISONS, task, rows)
        results["judge"] = _judge_summary(root / jobs[0].name)
        results["by_judge"] = hs_by_judge(root, [job.name for job in jobs], results["comparisons"],
                                          base_cfg.eval.judge_threshold)
        write_json(root / f"{stem}.json", results)
        plot(rows, task, root / f"{stem}.png")
        overall.advance(2)
        overall.update(description=f"demo ({suite.value})")  # its line stays on screen
    print(render(results))
    print(f"[antibody] wrote {root / (stem + '.json')} and {root / (stem + '.png')}")
    return 0
