"""`bench`: seconds per optimizer step of each stage variant, side by side in one process.

Every variant trains from the same initial weights on the same batches (same data seed),
for `bench.steps` steps after one warm-up step, so the ratios compare like with like:

    python -m antibody bench                     # embedded SmolLM2 on CPU
    python -m antibody bench experiment=tiny steps=2   # seconds, for a smoke check

Writes `runs/bench/bench.json` (override with run.output_dir / run.name).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import lightning as L
import torch

from antibody.app.arguments import pop_arg
from antibody.app.callbacks import StepTimer
from antibody.app.report import weight_summary
from antibody.app.rundir import write_json
from antibody.config import Config, ConfigError, compose
from antibody.infra import progress

# (name, stage, overrides): the four variants of the closing note of issue 3, plus Booster
VARIANTS = [
    ("align-sft", "align", ["method.align.method=sft"]),
    ("align-booster", "align", ["method=booster"]),  # the whole option: its lambda settings too
    ("align-antibody", "align", ["method.align.method=antibody"]),
    ("finetune-sft", "finetune", ["method.finetune.weighting=uniform"]),
    ("finetune-antibody", "finetune", ["method.finetune.weighting=likelihood_ratio"]),
]


def _time_variant(cfg: Config, stage: str, steps: int) -> dict:
    from antibody.app.stages import build_datamodule, module_for
    from antibody.config.schema import Stage
    from antibody.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, Stage(stage))
    L.seed_everything(cfg.run.seed)
    model, _ = load_model(cfg.model)
    module = module_for(Stage(stage), model, cfg)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        max_steps=steps + 1,  # the first (warm-up) step is excluded by StepTimer
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    out = timer.summary()
    if stage == "finetune":
        out.update(weight_summary(module.weight_records(), cfg.data.finetune_batch_size))
    return out


def bench_command(args: list[str]) -> int:
    value, args = pop_arg(args, "steps")  # the bench's own argument, not a config key
    if value is not None and (not value.isdigit() or int(value) < 1):  # one line, not a traceback
        raise ConfigError(f"steps={value}: expected an integer in [1, inf)")
    steps = int(value) if value is not None else 5
    has_run_name = any(a.startswith("run.name=") for a in args)
    if not has_run_name:
        args = [*args, "run.name=bench"]
    base = compose(args)
    results: dict = {
        "model": base.model.name,
        "batch_size": {"align": base.data.align_batch_size, "harmful": base.data.harmful_batch_size,
                       "finetune": base.data.finetune_batch_size},
        "max_length": base.data.max_length,
        "steps_timed": steps,
        "torch_threads": torch.get_num_threads(),
        "device": base.trainer.accelerator,
        "variants": {},
    }
    with progress.task("bench", total=len(VARIANTS)) as bar:
        for name, stage, overrides in VARIANTS:
            bar.update(description=f"bench {name}")
            cfg = compose([*args, *overrides])
            t0 = time.perf_counter()
            results["variants"][name] = _time_variant(cfg, stage, steps)
            results["variants"][name]["wall_seconds"] = time.perf_counter() - t0
            print(f"[bench] {name}: {results['variants'][name]['seconds_per_step']:.2f} s/step", flush=True)
            bar.advance()
    v = results["variants"]
    results["ratios"] = {
        "align_antibody_over_sft": v["align-antibody"]["seconds_per_step"] / v["align-sft"]["seconds_per_step"],
        "align_booster_over_sft": v["align-booster"]["seconds_per_step"] / v["align-sft"]["seconds_per_step"],
        "finetune_antibody_over_sft": v["finetune-antibody"]["seconds_per_step"]
        / v["finetune-sft"]["seconds_per_step"],
    }
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(base.run.output_dir) / base.run.name / "bench.json"
    write_json(out, results)
    for key, value in results["ratios"].items():
        print(f"[bench] {key}: {value:.2f}x")
    print(f"[bench] wrote {out}")
    return 0
