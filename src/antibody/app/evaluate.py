"""`eval`: evaluate a run (its adapter) or the un-aligned base model -> metrics.json.

    python -m antibody eval run=runs/<name> [eval.max_new_tokens=64 ...]
    python -m antibody eval [config overrides]        # the base model, no adapter

One process, one device, whatever ``trainer.devices``/``trainer.strategy`` say (those
configure training). Launched as several processes (torchrun, srun with several tasks) it
refuses: every process would generate and write the same files (docs/multi-gpu.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from antibody.app.arguments import pop_arg
from antibody.app.logs import run_log
from antibody.config import Config, ConfigError, compose
from antibody.config.compose import apply_overrides, load_saved

log = logging.getLogger(__name__)


def eval_records(cfg: Config, tokenizer) -> dict:
    """Evaluation records keyed by evaluation task name: each task of the registry that
    applies to the config reads the evaluation split it declares (from the data layer's
    evaluation rows; no training DataModule is built)."""
    from antibody.app.stages import split_inputs
    from antibody.data.evaluation import evaluation_records
    from antibody.evaluation.tasks import tasks_for

    splits = evaluation_records(cfg, tokenizer, **split_inputs(cfg))
    return {task.name.value: splits[task.split] for task in tasks_for(cfg)}


@dataclass(frozen=True)
class EvalTools:
    """What an evaluation judges with: built once before the evaluated model loads (the
    judge and the loss signal load models of their own), shared by every evaluation of a
    study that uses the same ones."""

    judge: Any  # antibody.evaluation.judges.base.Judge
    loss: Any = None  # the loss-based incoherence signal for HS+; None: the repeat rule only
    validation: Optional[dict] = None  # the judge's validation counts, for HS corrected
    pairwise: Any = None  # the win-rate judge of an instruction-following task


def instrument(cfg: Config, tokenizer) -> EvalTools:
    """The judge, the incoherence signal and the judge's validation counts an evaluation
    uses; built before the evaluated model loads."""
    from antibody.config.schema import Incoherence
    from antibody.evaluation.incoherence import loss_incoherence
    from antibody.evaluation.judges import build_judge
    from antibody.evaluation.judges.validation import judge_validation
    from antibody.evaluation.tasks import EvalTaskName, get_task
    from antibody.models import cache_root

    judge = build_judge(cfg.eval.judge, cfg, cache_root())
    # validated (and the loss threshold fitted) on labelled answers cut to the length this
    # evaluation generates
    answer_tokens = get_task(EvalTaskName.HARMFUL).resolve_max_new_tokens(cfg)
    loss = (loss_incoherence(cfg.eval.probe_model, cache_root(), answer_tokens)
            if cfg.eval.incoherence is Incoherence.REPEAT_OR_LOSS else None)
    validation = judge_validation(judge, cache_root(), cfg.eval.judge_threshold, answer_tokens=answer_tokens,
                                  tokenizer=tokenizer)
    pairwise = None
    if cfg.eval.pairwise_judge_path and cfg.task.name.value == EvalTaskName.ALPACA.value:
        from antibody.evaluation.judges.pairwise import RewardPairwiseJudge

        pairwise = RewardPairwiseJudge(cfg.eval.pairwise_judge_path, batch_size=cfg.eval.batch_size)
    return EvalTools(judge=judge, loss=loss, validation=validation, pairwise=pairwise)


def is_current(metrics_path: Path, tools: EvalTools) -> bool:
    """True when `metrics_path` exists and was judged by exactly these tools: the same judge
    (name and version), incoherence rule and judge validation. Otherwise an evaluation must
    run again; it judges the stored answers again and generates only what is missing."""
    import json

    from antibody.evaluation.judges.base import judge_id
    from antibody.evaluation.scoring import RowScorer

    if not metrics_path.is_file():
        return False
    saved = json.loads(metrics_path.read_text()).get("judge") or {}
    judge = tools.judge
    rule = RowScorer(judge, 0.5, tools.loss).rule
    validation = json.loads(json.dumps(tools.validation))  # as metrics.json stores it
    return (f"{saved.get('name')}:{saved.get('version')}" == judge_id(judge)
            and saved.get("incoherence_rule") == rule and saved.get("validation") == validation)


def evaluate_model(cfg: Config, adapter: Optional[Path], out_dir: Path, records=None, progress=None,
                   base_adapters: tuple = (), tools: Optional[EvalTools] = None) -> dict:
    """Load the model (+ adapter), judge, and evaluate every task into `out_dir`; `tools`
    (from `instrument`) lets several evaluations share one judge."""
    from antibody.evaluation.evaluator import evaluate
    from antibody.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    if records is None:
        records = eval_records(cfg, tokenizer)
    tools = tools if tools is not None else instrument(cfg, tokenizer)
    from antibody.models.placement import inference_device
    from antibody.models.precision import cast_for_inference

    model, tokenizer = load_model(
        cfg.model, with_lora=adapter is not None, adapter_path=adapter, base_adapters=base_adapters,
        device=inference_device(cfg.trainer.accelerator), inference=True,
    )
    model = cast_for_inference(model.eval(), cfg.trainer.precision)
    with run_log(out_dir.parent / "log.txt"):  # the evaluated run's log (base-<model>/ for the base model)
        result = evaluate(model, tokenizer, records, cfg, out_dir, tools.judge, progress=progress, loss=tools.loss,
                          validation=tools.validation, pairwise=tools.pairwise)
        log.info("%s: %s", eval_summary(out_dir.parent.name, result), out_dir)
    return result


def task_metric(metrics: dict) -> str | None:
    """The task's metric key among an evaluation's metrics (`<task>/accuracy` or `/win_rate`)."""
    return next((k for k in metrics if k.endswith(("/accuracy", "/win_rate"))), None)


def metrics_line(metrics: dict) -> str:
    """HS, HS corrected, refusal and FA of an evaluation's metrics, in %, for one log line
    (an evaluation's summary, a study cell's)."""
    def pct(key: str | None) -> str:
        value = (metrics.get(key) or {}).get("value") if key else None
        return "-" if value is None else f"{100 * value:.1f}%"

    return (f"HS {pct('harmful/harmful_score')}, HS corrected {pct('harmful/harmful_score_corrected')}, "
            f"refusal {pct('harmful/refusal_rate')}, FA {pct(task_metric(metrics))}")


def eval_summary(name: str, result: dict) -> str:
    """One line per finished evaluation: its figures (metrics_line), prompts and wall time."""
    metrics = result.get("metrics", {})
    n = (metrics.get("harmful/harmful_score") or {}).get("n")
    seconds = result.get("eval_seconds")
    head, rest = metrics_line(metrics).split(", ", 1)
    return f"eval done: {name}: {head} (n={n}), {rest}" + (f", {seconds:.1f} s" if seconds else "")


def refuse_multi_process(command: str = "eval") -> None:
    """Evaluation does not shard its prompts: say so before any work under a launcher that
    started several processes. `command`: eval, or a command that evaluates (study, demo,
    trial), which would otherwise run every job once per rank."""
    from antibody.app.rundir import launch_world_size

    world = launch_world_size()
    if world <= 1:
        return
    if command == "eval":
        hint = ("run `python -m antibody eval run=...` without torchrun and with srun --ntasks=1. "
                "trainer.devices and trainer.strategy configure training only; to evaluate several runs "
                "at once, start one eval per GPU")
    else:
        hint = (f"`{command}` trains and evaluates job after job in one process: start it without torchrun "
                "(srun --ntasks=1); to use several GPUs, run one sweep agent or trial per GPU, or train a "
                "single stage under torchrun with `align` / `finetune` trainer=ddp")
    raise ConfigError(
        f"{command} runs in one process on one device, but {world} processes were launched "
        f"(WORLD_SIZE / SLURM_STEP_NUM_TASKS); {hint} (docs/multi-gpu.md)"
    )


def eval_command(args: list[str]) -> int:
    refuse_multi_process()
    value, rest = pop_arg(args, "run")
    run = Path(value) if value is not None else None
    if run is None:
        cfg = compose(rest)
        out_dir = Path(cfg.run.output_dir) / f"base-{cfg.model.name}" / "eval"
        adapter = None
    else:
        if not (run / "config.yaml").is_file() or not (run / "adapter").is_dir():
            raise ConfigError(f"run={run}: not a finished run (needs config.yaml and adapter/)")
        cfg = apply_overrides(load_saved(run / "config.yaml"), rest)
        out_dir = run / "eval"
        adapter = run / "adapter"
    from antibody.app.stages import read_base_adapters

    base = tuple(read_base_adapters(run)) if run is not None else ()
    result = evaluate_model(cfg, adapter, out_dir, base_adapters=base)
    print(f"[antibody] wrote {out_dir / 'metrics.json'}")
    for key, value in result["metrics"].items():
        print(f"  {key:32s} {value.get('value', value)}")
    return 0
