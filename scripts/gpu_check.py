"""`make gpu-check`: every method of both stages, a few steps each, on a random-initialised
model of Llama-2-7B's shape, in nf4 (QLoRA; bf16 with --modes bf16), on one CUDA GPU;
generation and the judge on a few prompts, the stacked-adapter check of a 4-bit base
(app/gpu/checks.py); then the `gpu`-marked tests.

    python scripts/gpu_check.py                       # nf4, every method, then pytest -m gpu
    python scripts/gpu_check.py --modes bf16          # the bf16 LoRA path (a second run)
    python scripts/gpu_check.py --modes nf4 --steps 3 --layers 8
    python scripts/gpu_check.py --plan                # what would run and its expected time, and exit

Without a CUDA device it says so and exits 0 (nothing to check; docs/gpu.md).

First its expected time on one H100 (app/gpu/budget.py: counted FLOPs and named
assumptions); the default (one mode) is meant to fit about 8 minutes. Then, per mode: each
method's median seconds per optimiser step, its peak GPU memory
(``torch.cuda.max_memory_allocated`` over the fit, weights included) and its memory over
the loaded model (what the method adds), as ratios to SFT of the same stage. A method that
fails (out of memory) is reported and the rest still run; the exit status is then 1. One round, so the ratios carry no spread: `python -m
antibody bench` is the measurement; this is a check that every method runs at 7B scale,
with figures to compare against bench_stats.EXPECTED.

The model. No download: a ``LlamaConfig`` with Llama-2-7B's hyperparameters (below, from
meta-llama/Llama-2-7b-hf's config.json), random weights, saved once in bf16 to a temporary
folder (``/dev/shm`` when it has room) and loaded through ``load_model`` as a hub folder,
so the real loading path runs (nf4: bitsandbytes quantises on ``cuda:<local rank>``). The
tokenizer is the embedded SmolLM2 one (49,152 tokens; Llama-2's has 32,000), so the
vocabulary follows it: embeddings and head are 2 x 17,152 x 4,096 = 141M parameters (2%)
larger than Llama-2-7B's; the 32 decoder layers are exact. Data: ``experiment=tiny``'s
offline sources. Reuses the bench's pieces (``bench.method_config``, ``StepTimer``,
``bench_memory.peak_memory``, ``bench_stats``); unlike the bench, the base model is loaded
once per mode and each method gets a fresh LoRA from the same seed on it (a 7B load per
method would take most of the time).

Duration: not measured on a GPU yet (no CUDA machine has run it); ``--layers`` cuts the
depth if 32 layers do not fit in the time you have (the per-step ratios hardly depend on
depth; the absolute memory does).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from antibody.app.gpu.budget import BUDGET_MINUTES, EXPECTED_BASIS, LLAMA2_7B, expected_minutes  # noqa: E402
from antibody.app.gpu.checks import check_failures, inference_checks  # noqa: E402


class Mode(StrEnum):
    BF16 = "bf16"  # bf16 weights, LoRA, bf16-mixed
    NF4 = "nf4"  # QLoRA: 4-bit nf4 base, bf16 compute (conf/model/llama2-7b.yaml)


# config overrides per mode, on top of conf/model/llama2-7b.yaml (bf16, nf4, checkpointing)
MODE_OVERRIDES: dict[Mode, list[str]] = {
    Mode.BF16: ["model.quantization=none"],
    Mode.NF4: ["model.quantization=nf4"],
}


# the paper's batch and sequence length (docs/fidelity.md, C8 and C10)
PAPER_BATCH_LENGTH = (16, 256)


@dataclass(frozen=True)
class Variant:
    mode: Mode
    stage: str  # a Stage value
    method: str


def stage_methods() -> dict[str, list[str]]:
    """Every method of each stage, SFT (the reference of the ratios) first: the bench's list."""
    from antibody.app.bench.stats import REFERENCE, STAGE_METHODS

    return {s.value: [REFERENCE, *(m for m in ms if m != REFERENCE)] for s, ms in STAGE_METHODS.items()}


def plan(modes: list[Mode]) -> list[Variant]:
    return [Variant(mode, stage, m) for mode in modes for stage, ms in stage_methods().items() for m in ms]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modes", default="nf4",
                   help="comma-separated, from: " + ", ".join(Mode) + " (default nf4, the QLoRA path; bf16 is a "
                        "second run, to stay within the check's time)")
    p.add_argument("--steps", type=int, default=2, help="timed optimiser steps per method (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--layers", type=int, default=LLAMA2_7B["num_hidden_layers"],
                   help="decoder layers (default 32, Llama-2-7B's)")
    p.add_argument("--max-length", type=int, default=128, help="data.max_length (default 128; paper 256)")
    p.add_argument("--batch-size", type=int, default=4, help="every stage batch size (default 4)")
    p.add_argument("--no-tests", action="store_true", help="skip pytest -m gpu")
    p.add_argument("--plan", action="store_true", help="print the variants and exit")
    args = p.parse_args(argv)
    try:
        args.modes = [Mode(m.strip()) for m in args.modes.split(",") if m.strip()]
    except ValueError:
        p.error(f"--modes={args.modes}: choose from {', '.join(Mode)}")
    for name in ("steps", "layers", "max_length", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or not args.modes:
        p.error("--warmup must be >= 0 and --modes must name a mode")
    return args


def _scratch_dir(need_bytes: int) -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 1.5 * need_bytes:
        return Path(tempfile.mkdtemp(prefix="antibody-gpu-check-", dir=shm))
    return Path(tempfile.mkdtemp(prefix="antibody-gpu-check-"))


def write_random_llama(layers: int) -> Path:
    """Llama-2-7B's shape (``layers`` deep), random weights, bf16, with the embedded
    tokenizer, saved as a hub-style folder; initialised on the GPU (seconds, not minutes)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from antibody.config import compose
    from antibody.models import load_tokenizer

    tok = load_tokenizer(compose(["experiment=tiny"]).model)  # the embedded SmolLM2 tokenizer
    config = LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": layers}, vocab_size=len(tok),
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    folder = _scratch_dir(n_bytes)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    print(f"[gpu-check] random Llama-2-7B shape, {layers} layers, {n_bytes / 2**30:.1f} GiB bf16 -> {folder}",
          flush=True)
    del model
    torch.cuda.empty_cache()
    return folder


def overrides(args: argparse.Namespace, folder: Path, mode: Mode, out_dir: Path) -> list[str]:
    b = args.batch_size
    return ["experiment=tiny", "model=llama2-7b", f"model.path={folder}", "model.name=llama2-7b-random",
            "trainer=gpu", "trainer.progress_bar=false", f"data.max_length={args.max_length}",
            f"data.align_batch_size={b}", f"data.harmful_batch_size={b}", f"data.finetune_batch_size={b}",
            f"run.output_dir={out_dir}", "run.name=gpu-check", *MODE_OVERRIDES[mode]]


def _fit(cfg, stage, base, tokenizer, steps: int, warmup: int) -> dict:
    """One method from a fresh LoRA on ``base``: timed steps and the fit's peak memory (as
    bench._time_variant, with the model given rather than loaded)."""
    import lightning as L

    from antibody.app.bench.memory import peak_memory
    from antibody.app.callbacks import StepTimer
    from antibody.app.stages import build_datamodule, module_for
    from antibody.config.schema import Stage
    from antibody.models.adapters import apply_lora

    dm = build_datamodule(cfg, tokenizer, Stage(stage))
    L.seed_everything(cfg.run.seed, verbose=False)  # the same LoRA draw for every method
    model = apply_lora(base, cfg.model.lora)
    model.train()
    module = module_for(Stage(stage), model, cfg)
    timer = StepTimer()
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        max_steps=warmup + steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                        limit_val_batches=0, num_sanity_val_steps=0)
    try:
        with peak_memory(trainer.strategy.root_device, module) as reading:
            trainer.fit(module, datamodule=dm)
    finally:
        model.unload()  # the LoRA layers out again (not merged): the next method's base is clean
    return {"step_seconds": timer.step_times[warmup:], "memory": reading}


def run_mode(args: argparse.Namespace, folder: Path, mode: Mode, out_dir: Path) -> dict:
    import torch

    from antibody.app.bench.run import method_config
    from antibody.config.schema import Stage
    from antibody.models import load_model

    base_args = overrides(args, folder, mode, out_dir)
    results: dict = {}
    base = tokenizer = None
    for stage, methods in stage_methods().items():
        times, memory, failed = {}, {}, {}
        for method in methods:
            cfg = method_config(base_args, Stage(stage), method, args.warmup + args.steps)
            if base is None:  # once per mode: the model settings do not depend on the method
                t0 = time.perf_counter()
                # nf4: no device named, so the rank-aware default (cuda:<local rank>) places it
                base, tokenizer = load_model(cfg.model, with_lora=False, device=None if mode is Mode.NF4 else "cuda")
                load_model_s = time.perf_counter() - t0
                print(f"[gpu-check] {mode}: loaded in {load_model_s:.0f} s", flush=True)
            print(f"[gpu-check] {mode} {stage} {method} ...", flush=True)
            try:
                out = _fit(cfg, stage, base, tokenizer, args.steps, args.warmup)
            except Exception as exc:  # noqa: BLE001 - one method's failure (out of memory, ...) must not end the rest
                failed[method] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                print(f"[gpu-check] {mode} {stage} {method} FAILED: {failed[method]}", flush=True)
            else:
                times[method], memory[method] = [out["step_seconds"]], out["memory"]
            gc.collect()
            torch.cuda.empty_cache()
        results[stage] = stage_results(methods, times, memory, failed)
    results["checks"] = inference_checks(base, tokenizer, base_args, out_dir, quantised=mode is Mode.NF4)
    del base
    gc.collect()
    torch.cuda.empty_cache()
    return results


def stage_results(methods: list[str], times: dict, memory: dict, failed: dict) -> dict:
    """Each method's timing and memory, as ratios to SFT where SFT ran; a failed method
    keeps its error instead."""
    from antibody.app.bench.stats import REFERENCE, memory_ratios, timing_summary

    out: dict = {}
    ok = [m for m in methods if m in times]
    if REFERENCE in times:
        summary, mem = timing_summary({m: times[m] for m in ok}), memory_ratios({m: memory[m] for m in ok})
    else:  # no reference: absolute figures only
        summary = {m: {"median_s": float(sorted(times[m][0])[len(times[m][0]) // 2]), "ratio": None} for m in ok}
        mem = {m: {**memory[m], "peak_ratio": None, "over_load_ratio": None} for m in ok}
    for m in methods:
        out[m] = {"error": failed[m]} if m in failed else {**summary[m], "memory": mem[m]}
    return out


def _x(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(mode: Mode, results: dict, args: argparse.Namespace) -> int:
    """The mode's table (the memory over the loaded model is what a method adds: the peak
    includes the weights, which every method shares) and its inference checks; returns the
    number of failures."""
    scale = ("the paper's batch and length" if (args.batch_size, args.max_length) == PAPER_BATCH_LENGTH else
             f"batch {args.batch_size}, length {args.max_length}: not the paper's "
             f"{PAPER_BATCH_LENGTH[0]} x {PAPER_BATCH_LENGTH[1]}, so the memory figures are not paper-scale")
    print(f"\n[gpu-check] {mode}: seconds per step and GPU memory ({scale}); ratios to SFT of the stage")
    print(f"{'stage':9} {'method':10} {'s/step':>8} {'x sft':>6} {'peak GiB':>9} {'over load GiB':>14} {'x sft':>6}")
    failures = 0
    for stage, methods in results.items():
        if stage == "checks":
            continue
        for method, r in methods.items():
            if "error" in r:
                failures += 1
                print(f"{stage:9} {method:10} FAILED: {r['error']}")
                continue
            m = r["memory"]
            peak, over = m["peak_mib"] / 1024, (m.get("over_load_mib") or 0.0) / 1024
            print(f"{stage:9} {method:10} {r['median_s']:8.3f} {_x(r['ratio']):>6} {peak:9.1f} {over:14.2f} "
                  f"{_x(m.get('over_load_ratio')):>6}")
    for name, check in results.get("checks", {}).items():
        print(f"[gpu-check] {mode} {name}: {check}")
    for problem in check_failures(results.get("checks", {})):
        failures += 1
        print(f"[gpu-check] {mode} FAILED {problem}")
    return failures


def no_cuda_message() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"[gpu-check] no CUDA device: torch {torch.__version__} ({build}) sees none, so there is "
            "nothing to check here; on a GPU machine install the CUDA build of torch (docs/gpu.md) and rerun")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = plan(args.modes)
    if args.plan:
        for v in variants:
            print(f"{v.mode} {v.stage} {v.method}")
        print(f"expected about {expected_minutes(args):.1f} min on one H100 ({EXPECTED_BASIS})")
        return 0
    message = no_cuda_message()
    if message:
        print(message)
        print(f"[gpu-check] it would run {len(variants)} variants: "
              + ", ".join(f"{v.mode}/{v.stage}/{v.method}" for v in variants))
        return 0
    expected = expected_minutes(args)
    print(f"[gpu-check] expected about {expected:.1f} min on one H100 ({EXPECTED_BASIS})", flush=True)
    if expected > BUDGET_MINUTES:
        print(f"[gpu-check] that is over the {BUDGET_MINUTES} min a check should take: run one mode at a time "
              "(--modes nf4, then --modes bf16) or fewer --layers", flush=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the random model is local; nothing is fetched
    os.environ.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    folder = write_random_llama(args.layers)
    out_dir = Path(tempfile.mkdtemp(prefix="antibody-gpu-check-runs-"))
    failures = 0
    try:
        for mode in args.modes:
            failures += report(mode, run_mode(args, folder, mode, out_dir), args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"\n[gpu-check] methods done in {(time.perf_counter() - t0) / 60:.1f} min, {failures} failed", flush=True)
    tests = 0 if args.no_tests else subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"],
                                                    cwd=REPO)
    print(f"[gpu-check] done in {(time.perf_counter() - t0) / 60:.1f} min (expected {expected:.1f})", flush=True)
    return 1 if failures or tests else 0


if __name__ == "__main__":
    sys.exit(main())
