"""The third stage: change a finished fine-tuning run's model without training it, into a
run dir of its own that evaluates like any other (adapter/, base_adapters.json, metrics.json).

    python -m antibody repair run.init_from=<fine-tuning run> method.repair.method=antidote

Bad input fails before the model loads: the config at compose, the fine-tuning run here,
the calibration rows when the DataModule builds its splits.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from antibody.app.logs import run_log
from antibody.app.rundir import DONE, RunDir, launch_world_size, resolve_init_from, run_dir_for, write_json
from antibody.config import Config, ConfigError, to_container
from antibody.config.schema import RepairMethod, Stage

log = logging.getLogger(__name__)


def repaired_run(cfg: Config) -> Path:
    """The finished fine-tuning run that `run.init_from` names (a path, a name under
    run.output_dir, or latest)."""
    if not cfg.run.init_from:
        raise ConfigError("repair needs run.init_from=<fine-tuning run dir, name or latest>")
    init = resolve_init_from(cfg.run.init_from, cfg.run.output_dir, stage=Stage.FINETUNE.value)
    stage = RunDir(init).stage()
    if stage != Stage.FINETUNE.value:
        found = f"a finished {stage} run" if stage else f"an unfinished run (no {DONE} marker)"
        raise ConfigError(f"run.init_from={cfg.run.init_from!r}: {init} is {found}; repair takes a finished "
                          "fine-tuning run")
    return init


def calibration_batches(cfg: Config, tokenizer) -> list[dict]:
    """Antidote's harmful rows: the defender's D_harm (the alignment stage's harmful split,
    kept disjoint from the upload and the evaluation by the data layer), the first
    method.repair.antidote.n_samples of it, in batches of data.eval_batch_size."""
    from antibody.app.stages import build_datamodule
    from antibody.data.collate import collate_rows
    from antibody.data.plan import Split

    rows = build_datamodule(cfg, tokenizer, Stage.ALIGN).encoded(Split.HARMFUL)
    n = cfg.method.repair.antidote.n_samples
    if n is not None:
        if n > len(rows):
            raise ConfigError(f"method.repair.antidote.n_samples={n}: the harmful split (D_harm, "
                              f"data.alignment.n_harmful_answers) holds {len(rows)} rows")
        rows = rows[:n]
    size = cfg.data.eval_batch_size
    pad = tokenizer.pad_token_id
    return [collate_rows(rows[i : i + size], pad) for i in range(0, len(rows), size)]


def repair_stage(cfg: Config) -> RunDir:
    if launch_world_size() > 1:  # every process would prune and write the same run dir
        raise ConfigError(f"repair runs in one process (a one-shot pass over the calibration rows), but "
                          f"{launch_world_size()} were launched (WORLD_SIZE / SLURM_STEP_NUM_TASKS); start it "
                          "without torchrun and with srun --ntasks=1")
    method = cfg.method.repair.method
    if method is RepairMethod.NONE:
        raise ConfigError("repair: method.repair.method=none repairs nothing; name a repair method "
                          f"(allowed: {[m.value for m in RepairMethod if m is not RepairMethod.NONE]})")
    init = repaired_run(cfg)
    run = run_dir_for(cfg, Stage.REPAIR.value)
    with run_log(run.path / "log.txt"):
        return _repair_in(cfg, run, init)


def _repair_in(cfg: Config, run: RunDir, init: Path) -> RunDir:
    from antibody.app.stages import read_base_adapters
    from antibody.methods.antidote import antidote_prune
    from antibody.models import load_model, load_tokenizer, save_adapter
    from antibody.models.placement import inference_device

    method = cfg.method.repair.method
    base_adapters = read_base_adapters(init)
    tokenizer = load_tokenizer(cfg.model)
    batches = calibration_batches(cfg, tokenizer)
    t0 = time.perf_counter()
    model, _ = load_model(cfg.model, adapter_path=init / "adapter", base_adapters=base_adapters,
                          device=inference_device(cfg.trainer.accelerator), inference=True)
    report = antidote_prune(model, batches, cfg.method.repair.antidote.dense_ratio)
    wall = time.perf_counter() - t0
    save_adapter(model, run.adapter)
    write_json(run.path / "base_adapters.json", [str(p) for p in base_adapters])
    write_json(run.metrics_path, {
        "stage": Stage.REPAIR.value,
        "method": method.value,
        "run": cfg.run.name,
        "init_from": str(init),
        "wall_seconds": wall,
        "pruned": report.as_dict(),
        "config": to_container(cfg),
    })
    run.mark_done(Stage.REPAIR.value)
    log.info("job done: %s, stage repair (%s), %.1f s, %d of %d adapter weights zeroed: %s", cfg.run.name,
             method.value, wall, report.zeroed, report.weights, run.path)
    return run
