"""`trial`: one study cell from command-line overrides, what a W&B sweep agent runs.

    python -m antibody trial data.user.p=0.1 method=antibody logger=wandb

The trial aligns (unless a finished alignment with the same alignment config exists:
`runs/<output_dir>/trials/align-<hash>`, shared by every trial that needs it), fine-tunes
(`ft-<hash>`: two trials with different overrides never share a run dir), repairs when
`method.repair.method` names a repair (`repair-<hash>`) and evaluates the last model,
then reports HS, HS+, HS corrected, refusal, over-refusal, FA, the per-source weight
shares and the weight terms' detector AUROCs as the W&B run's summary metrics, and the
harmful predictions as a W&B table (with `logger=wandb`; `trial_summary.json` in the
fine-tuning run dir either way). The sweep's metric is one of those summary keys
(`harmful/harmful_score`, `<task>/accuracy`), never the training loss.

Two agents that need the same alignment at once: the second waits on a file lock in the
trials folder and then finds it finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from antibody.app.rundir import write_json
from antibody.config import Config, compose
from antibody.config.schema import LoggerKind
from antibody.config.study import StudyConfig, StudyRow

TRIALS = "trials"


def trial_cell(overrides: list[str]):
    """The study cell of these overrides (one row, one seed: the config's own)."""
    from antibody.app.study.plan import plan

    cfg = compose(list(overrides))
    study = StudyConfig(name=TRIALS, fixed=list(overrides), seeds=[cfg.run.seed],
                        rows={"trial": StudyRow(align=[], finetune=[])})
    root = Path(cfg.run.output_dir) / TRIALS
    (cell,) = plan(study, root)
    return cell, root


def summary_metrics(ft_dir: Path, model_dir: Path | None = None) -> dict:
    """Flat summary of a finished fine-tuning run (W&B summary keys): the evaluation of
    `model_dir` (default: the fine-tuned model; a repaired one when the trial repairs), the
    fine-tuning run's weights, detector and step time."""
    from antibody.app.study.report import weights_and_detector

    ev = json.loads(((model_dir or ft_dir) / "eval" / "metrics.json").read_text())
    out = {k: m["value"] for k, m in ev["metrics"].items() if m.get("value") is not None}
    for k, m in ev["metrics"].items():
        if m.get("ci95_low") is not None:
            out[f"{k}/ci95_low"], out[f"{k}/ci95_high"] = m["ci95_low"], m["ci95_high"]
    out.update(weights_and_detector(ft_dir))
    train = json.loads((ft_dir / "metrics.json").read_text())
    out["train/seconds_per_step"] = train.get("seconds_per_step")
    return {k: v for k, v in out.items() if v is not None}


def _log_wandb(cfg: Config, name: str, summary: dict, predictions: list[dict], run_dir: Path) -> None:
    import wandb

    from antibody.app.loggers import wandb_mode
    from antibody.config import to_container

    run = wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, name=name, dir=str(run_dir),
                     mode=wandb_mode(cfg, run_dir), config=to_container(cfg), tags=[*cfg.logger.tags, "trial"],
                     reinit="finish_previous")
    run.summary.update(summary)
    cols = ["uid", "question", "response", "judge_score", "verdict", "refusal", "incoherent"]
    run.log({"predictions/harmful": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in predictions])})
    run.finish()
    # finish() returns before wandb-core has closed the run file (its internal log shows the
    # stream finishing after); teardown waits for it, so the offline run file is complete
    # when the trial returns and `wandb sync` right after uploads every summary key
    wandb.teardown()


def trial_command(overrides: list[str]) -> int:
    from filelock import FileLock

    from antibody.app.evaluate import refuse_multi_process
    from antibody.app.study.plan import job_config
    from antibody.app.study.run import evaluate_job, train_job
    from antibody.evaluation.evaluator import read_predictions

    refuse_multi_process("trial")
    cell, root = trial_cell(overrides)
    root.mkdir(parents=True, exist_ok=True)
    for job in (cell.align, cell.finetune, cell.repair):
        if job is None:  # no repair stage (method.repair.method=none)
            continue
        with FileLock(str(root / f"{job.name}.lock")):  # agents sharing a job wait here
            train_job(job)
    model = cell.model_job  # the repaired model when the trial repairs, else the fine-tuned one
    evaluate_job(model, {})
    cfg = job_config(model)
    ft_dir, model_dir = root / cell.finetune.name, root / model.name
    summary = summary_metrics(ft_dir, model_dir)
    write_json(model_dir / "trial_summary.json", {"overrides": list(overrides), "summary": summary})
    if cfg.logger.kind is LoggerKind.WANDB and os.environ.get("WANDB_MODE") != "disabled":
        preds = read_predictions(model_dir / "eval" / "predictions" / "harmful.jsonl", repair=False)
        _log_wandb(cfg, model.name, summary, preds, model_dir)
    for key in sorted(summary):
        print(f"  {key:40s} {summary[key]:.4g}" if isinstance(summary[key], float) else f"  {key:40s} {summary[key]}")
    print(f"[antibody] trial finished: {model_dir}")
    return 0
