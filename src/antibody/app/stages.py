"""Run one training stage with Lightning: data checks, model, module, trainer, outputs.

Order matters for "bad input fails before expensive work": the config is validated by
`compose`, then the DataModule builds its splits and checks pool sizes (cheap; model-
written sources are generated only after the checks), and only then is the model loaded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from antibody.app.callbacks import ProgressLines, StepTimer
from antibody.app.errors import StageInterrupted
from antibody.app.loggers import build_logger
from antibody.app.logs import run_log
from antibody.app.rundir import (  # noqa: F401  (read_base_adapters: re-exported for its callers)
    RunDir,
    launch_rank,
    read_base_adapters,
    resolve_init_from,
    run_dir_for,
    write_json,
)
from antibody.config import Config, to_container
from antibody.config.errors import ConfigError
from antibody.config.schema import Stage
from antibody.data.datamodule import default_cache_dir
from antibody.data.plan import train_split_for
from antibody.infra import progress
from antibody.infra.files import atomic_write_jsonl

log = logging.getLogger(__name__)

ADAPTIVE_FILE = "adaptive_attack.json"  # what an adaptive attack built (fine-tuning runs)


def lazy_base_generator(cfg: Config) -> tuple[Callable[[list[str]], list[str]], dict]:
    """A generator that loads the UNALIGNED base model on first use (model-written data
    must come from the base model, whatever adapter the stage trains)."""
    from antibody.evaluation.generation import make_text_generator
    from antibody.models import load_model

    state: dict = {}

    def generate(instructions: list[str]) -> list[str]:
        if "fn" not in state:
            from antibody.models.placement import inference_device

            model, tok = load_model(cfg.model, with_lora=False, device=inference_device(cfg.trainer.accelerator),
                                    inference=True)
            model.eval()
            state["fn"] = make_text_generator(
                model,
                tok,
                cfg.data.prompt_format,
                max_new_tokens=cfg.data.generation_max_new_tokens,
                batch_size=cfg.data.generation_batch_size,
            )
        # chunked so that a long first-time generation shows progress (cached afterwards);
        # the data layer calls this once per batch, so the bar counts across calls
        chunk = 4 * cfg.data.generation_batch_size
        out: list[str] = []
        with progress.task("base model writing answers (cached once done)", keep=False) as bar:
            bar.update(completed=state.get("answered", 0))
            for start in range(0, len(instructions), chunk):
                answers = state["fn"](instructions[start : start + chunk])
                out.extend(answers)
                state["answered"] = state.get("answered", 0) + len(answers)
                bar.update(completed=state["answered"])
        return out

    from antibody.data.datamodule import default_generator_settings

    settings = default_generator_settings(cfg)
    return generate, settings


class LazyAnswerJudge:
    """data.harmful_answer_filter=judge: the evaluation's judge (eval.judge, behind the gate
    if eval.judge_refusal_gate) as the data layer's AnswerJudge, built on first use: a build
    whose verdicts are all cached loads it for its version only."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.threshold = cfg.eval.judge_threshold
        self._judge = None

    def _built(self):
        if self._judge is None:
            from antibody.evaluation.judges import build_judge
            from antibody.models import cache_root

            self._judge = build_judge(self.cfg.eval.judge, self.cfg, cache_root())
        return self._judge

    @property
    def version(self) -> str:
        from antibody.evaluation.judges.base import judge_id

        return judge_id(self._built())

    def scores(self, prompts: list[str], answers: list[str]) -> list[float]:
        return list(self._built().score(prompts, answers))


def build_datamodule(cfg: Config, tokenizer, stage: Stage):
    """The stage's DataModule, its splits built: prepare_data() writes any missing
    model-written rows (the base model loads only then), setup() reads them. Pool checks
    fail here, before any model for training is loaded."""
    dm = new_datamodule(cfg, tokenizer, stage)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def split_inputs(cfg: Config, stage: Stage | None = None) -> dict:
    """What every build of a config's splits is given (SafetyDataModule's and
    `antibody.data.evaluation.evaluation_records`'s keyword arguments): the lazy base model
    as the writer of model-written rows and their cache key, the cache, and the judges'
    labelled prompts: skipped where a demand allows it, and refused in any split if of a
    judge part, whichever judge the run uses (judges never train or validate on a prompt a
    model saw or is scored on). An adaptive attack's attacked model (app/attacked.py): for the
    fine-tuning stage the aligned run it starts from (a ConfigError without run.init_from),
    never for the alignment stage (which does not read the upload); for an evaluation (`stage`
    None) the run's aligned run where it names one, so that the build holds the upload the run
    trained on and its leak checks cover it (the model loads only for rows not cached)."""
    from antibody.app.attacked import attacked_model_for
    from antibody.config.schema import AnswerFilter
    from antibody.evaluation.judges.labelled import excluded_prompts, judge_prompts

    generator, settings = lazy_base_generator(cfg)
    judge = LazyAnswerJudge(cfg) if cfg.data.harmful_answer_filter is AnswerFilter.JUDGE else None
    return {"generator": generator, "generator_settings": settings, "cache_dir": default_cache_dir(),
            "exclude_prompts": excluded_prompts(), "forbidden_prompts": judge_prompts(), "answer_judge": judge,
            "attacked_model": None if stage is Stage.ALIGN else attacked_model_for(cfg, required=stage is not None)}


def new_datamodule(cfg: Config, tokenizer, stage: Stage):
    """The stage's DataModule, nothing built yet; its generator is the lazy base model. The
    fine-tuning stage's upload under an adaptive attack is built under the aligned run it
    starts from (a ConfigError without run.init_from); the alignment stage never reads it."""
    from antibody.data.datamodule import SafetyDataModule

    # the upload, its benign-only control or SafeInstr's mix (data.user.benign_only,
    # method.finetune.method); the DataModule's own default, spelled out here
    train_split = train_split_for(cfg, stage)
    return SafetyDataModule(cfg, tokenizer, stage=stage.value, train_split=train_split, **split_inputs(cfg, stage))


def module_config(cfg: Config, stage: Stage, dm) -> Config:
    """The config the stage's module gets: a provider's upload (data.user.path) has its own
    row count, not data.user.n, so the detector window (one pass over the upload, in
    micro-batches) is sized from the user split the DataModule built; the Bayesian Data
    Scheduler's weights are a softmax over that split's rows."""
    import dataclasses
    import math

    from antibody.config.schema import FinetuneMethod, finetune_method

    ft = cfg.method.finetune
    if stage is Stage.FINETUNE and finetune_method(ft) is FinetuneMethod.BDS and ft.bds.rows is None:
        # the Bayesian Data Scheduler's softmax runs over the rows it trains on
        rows = len(dm.records(train_split_for(cfg, stage)))
        ft = dataclasses.replace(ft, bds=dataclasses.replace(ft.bds, rows=rows))
        cfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, finetune=ft))
    if stage is not Stage.FINETUNE or not cfg.data.user.path or ft.detector_window is not None:
        return cfg
    window = math.ceil(len(dm.records(train_split_for(cfg, stage))) / cfg.data.finetune_batch_size)
    return dataclasses.replace(cfg, method=dataclasses.replace(
        cfg.method, finetune=dataclasses.replace(ft, detector_window=max(1, window))))


def shows_bar(cfg: Config) -> bool:
    """Lightning's training bar, on a terminal only: in a file it is one garbled line at the
    end; there the ProgressLines callback reports instead."""
    return cfg.trainer.progress_bar and progress.console.is_terminal


def build_trainer(cfg: Config, run: RunDir, stage: Stage, max_steps: int, extra_callbacks=()):
    from antibody.config.validate import check_in_process_strategy

    check_in_process_strategy(cfg.trainer.strategy)  # compose checks it too; a hand-built Config
    callbacks: list = [
        ModelCheckpoint(
            dirpath=str(run.checkpoints),
            every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
            save_last=True,
            save_top_k=0,
        ),
        ProgressLines(f"train {cfg.run.name} ({stage.value})"),
        *extra_callbacks,
    ]
    bar = shows_bar(cfg)
    if bar:
        callbacks.append(RichProgressBar())
    return L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        max_steps=max_steps,
        max_epochs=-1,
        logger=build_logger(cfg, run.path, stage.value),
        callbacks=callbacks,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=bar,
        enable_model_summary=False,
        deterministic=cfg.trainer.deterministic,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def module_for(stage: Stage, model, cfg: Config):
    from antibody.methods import build_align_module, build_finetune_module

    if cfg.trainer.attention is not None:
        # training's own attention kernel (config/precision.py); the adapter saved from this
        # model does not record it, so an evaluation loads the model's kernel again
        model.set_attn_implementation(cfg.trainer.attention)
    return {Stage.ALIGN: build_align_module, Stage.FINETUNE: build_finetune_module}[stage](model, cfg)


def train_stage(cfg: Config, stage: Stage) -> RunDir:
    init_dir: Path | None = None
    if stage is Stage.FINETUNE and cfg.run.init_from:
        init_dir = resolve_init_from(cfg.run.init_from, cfg.run.output_dir)
        if cfg.method.finetune.merge_then_new_adapter and not cfg.model.lora.enabled:
            raise ConfigError("method.finetune.merge_then_new_adapter needs model.lora.enabled=true")
    if stage is Stage.FINETUNE:
        from antibody.app.attacked import require_aligned_run

        require_aligned_run(cfg)  # an adaptive attack needs the aligned run: before anything is written
    if stage is Stage.FINETUNE and cfg.data.user.path:
        from antibody.data.upload import validate_upload

        validate_upload(cfg)  # a provider's upload: checked before anything is written
    # several processes (docs/multi-gpu.md) run all of this; only rank zero writes files.
    # No process group exists before fit, so the launcher's environment says who is zero.
    zero = launch_rank(cfg.trainer.devices) == 0
    run = run_dir_for(cfg, stage.value, write=zero)
    with run_log(run.path / "log.txt") if zero else contextlib.nullcontext():
        return _train_in(cfg, stage, run, init_dir, zero)


def _train_in(cfg: Config, stage: Stage, run: RunDir, init_dir: Path | None, zero: bool) -> RunDir:
    """The stage's work once its run dir exists (logged to its log.txt on rank zero)."""
    from antibody.models import load_model, load_tokenizer

    L.seed_everything(cfg.run.seed, workers=True)

    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, stage)
    if zero:
        summary = dm.summary()
        write_json(run.path / "data_summary.json", summary)
        if stage is Stage.FINETUNE and summary["attack"].get("adaptive_build"):
            # an adaptive attack's choices (refusal_prefix: every candidate's mean r), on their own
            write_json(run.path / ADAPTIVE_FILE, {k: summary["attack"][k] for k in ("name", "adaptive_build")})

    adapter = init_dir / "adapter" if init_dir is not None else None
    base_adapters = read_base_adapters(init_dir) if init_dir is not None else []
    L.seed_everything(cfg.run.seed, workers=True)  # new LoRA tensors draw from the global RNG
    if stage is Stage.FINETUNE and adapter is not None and cfg.method.finetune.merge_then_new_adapter:
        # the alignment adapter goes beneath a new one (merged, or stacked frozen where a merge
        # would round it away: models.adapters.merges_exactly); the saved adapter is then only
        # the new one, so record what lies beneath it
        base_adapters, adapter = [*base_adapters, str(adapter.resolve())], None
    model, _ = load_model(cfg.model, adapter_path=adapter, base_adapters=base_adapters)
    if zero:
        write_json(run.path / "base_adapters.json", [str(p) for p in base_adapters])
    model.train()  # from_pretrained returns eval mode; Lightning would keep it per module
    module = module_for(stage, model, module_config(cfg, stage, dm))
    steps = cfg.method.align.max_steps if stage is Stage.ALIGN else cfg.method.finetune.max_steps
    timer = StepTimer()
    trainer = build_trainer(cfg, run, stage, steps, extra_callbacks=[timer])
    ckpt = str(run.last_checkpoint) if run.last_checkpoint.exists() else None
    if ckpt and zero:
        print(f"[antibody] resuming {run.path} from {ckpt}")
    # Lightning's training bar is a display of its own: ours (e.g. the demo's) steps aside
    hide_ours = progress.paused() if shows_bar(cfg) else contextlib.nullcontext()
    t0 = time.perf_counter()
    with hide_ours:
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1) once it has torn down
            if not trainer.interrupted:
                raise
    wall = time.perf_counter() - t0

    if trainer.global_step < steps:  # interrupted (e.g. KeyboardInterrupt): keep it resumable
        raise StageInterrupted(f"stage stopped at step {trainer.global_step}/{steps}; rerun to resume")
    # every rank holds the same adapter and (fine-tuning) the same global weight records:
    # rank zero writes them, and no rank returns (to a next stage that reads them) before
    # they exist
    trainer.strategy.barrier("antibody-outputs")
    if trainer.is_global_zero:
        _write_outputs(cfg, stage, run, trainer, module, model, init_dir, wall, timer)
    trainer.strategy.barrier("antibody-outputs-written")
    return run


def _write_outputs(cfg: Config, stage: Stage, run: RunDir, trainer, module, model, init_dir, wall: float,
                   timer: StepTimer) -> None:
    """The finished stage's adapter, weight records, metrics and DONE marker (rank zero)."""
    from antibody.methods import WeightRecording
    from antibody.models import save_adapter

    save_adapter(model, run.adapter)
    metrics = {
        "stage": stage.value,
        "run": cfg.run.name,
        "init_from": str(init_dir) if init_dir else None,
        "steps": trainer.global_step,
        "wall_seconds": wall,
        **timer.summary(),
        "final": {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1},
        "config": to_container(cfg),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if isinstance(module, WeightRecording):  # the weighted fine-tuning modules
        atomic_write_jsonl(run.path / "weights.jsonl", module.weight_records(), ensure_ascii=True)
        metrics["detector"] = module.detector_metrics()
    write_json(run.metrics_path, metrics)
    run.mark_done(stage.value)
    log.info("job done: %s, stage %s, %d steps, %.1f s, %.3g s/step: %s", cfg.run.name, stage.value,
             trainer.global_step, wall, metrics["seconds_per_step"], run.path)
