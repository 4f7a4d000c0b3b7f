"""`make gpu-check`: every method of both stages, a few steps each, on a random-initialised
model of Llama-2-7B's shape, in bf16 and in nf4 (QLoRA), on one CUDA GPU; then the
`gpu`-marked tests.

    python scripts/gpu_check.py                       # both modes, every method, then pytest -m gpu
    python scripts/gpu_check.py --modes nf4 --steps 3 --layers 8
    python scripts/gpu_check.py --plan                # list what would run, and exit

Without a CUDA device it says so and exits 0 (nothing to check; docs/gpu.md).

What it prints, per mode: each method's median seconds per optimiser step and peak GPU
memory (``torch.cuda.max_memory_allocated`` over the fit, weights included), each as a
ratio to SFT of the same stage. One round, so the ratios carry no spread: `python -m
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

# meta-llama/Llama-2-7b-hf, config.json (hub model card files): the decoder's shape.
# vocab_size 32000 is replaced by the tokenizer's (module docstring); rope_theta is
# LlamaConfig's default 10000.0, which that config.json leaves unset.
LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}


class Mode(StrEnum):
    BF16 = "bf16"  # bf16 weights, LoRA, bf16-mixed
    NF4 = "nf4"  # QLoRA: 4-bit nf4 base, bf16 compute (conf/model/llama2-7b.yaml)


# config overrides per mode, on top of conf/model/llama2-7b.yaml (bf16, nf4, checkpointing)
MODE_OVERRIDES: dict[Mode, list[str]] = {
    Mode.BF16: ["model.quantization=none"],
    Mode.NF4: ["model.quantization=nf4"],
}


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
    p.add_argument("--modes", default="bf16,nf4", help="comma-separated, from: " + ", ".join(Mode))
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
    from antibody.app.bench.stats import memory_ratios, timing_summary
    from antibody.config.schema import Stage
    from antibody.models import load_model

    base_args = overrides(args, folder, mode, out_dir)
    results: dict = {}
    base = tokenizer = None
    for stage, methods in stage_methods().items():
        times, memory = {}, {}
        for method in methods:
            cfg = method_config(base_args, Stage(stage), method, args.warmup + args.steps)
            if base is None:  # once per mode: the model settings do not depend on the method
                t0 = time.perf_counter()
                # nf4: no device named, so the rank-aware default (cuda:<local rank>) places it
                base, tokenizer = load_model(cfg.model, with_lora=False, device=None if mode is Mode.NF4 else "cuda")
                load_model_s = time.perf_counter() - t0
                print(f"[gpu-check] {mode}: loaded in {load_model_s:.0f} s", flush=True)
            print(f"[gpu-check] {mode} {stage} {method} ...", flush=True)
            out = _fit(cfg, stage, base, tokenizer, args.steps, args.warmup)
            times[method], memory[method] = [out["step_seconds"]], out["memory"]
            gc.collect()
            torch.cuda.empty_cache()
        summary, mem = timing_summary(times), memory_ratios(memory)
        results[stage] = {m: {**summary[m], "memory": mem[m]} for m in methods}
    del base
    gc.collect()
    torch.cuda.empty_cache()
    return results


def report(mode: Mode, results: dict) -> None:
    print(f"\n[gpu-check] {mode}: seconds per step and peak GPU memory, ratios to SFT of the stage")
    print(f"{'stage':9} {'method':10} {'s/step':>8} {'x sft':>6} {'peak GiB':>9} {'x sft':>6}")
    for stage, methods in results.items():
        for method, r in methods.items():
            peak = r["memory"]["peak_mib"] / 1024
            print(f"{stage:9} {method:10} {r['median_s']:8.3f} {r['ratio']:6.2f} {peak:9.1f} "
                  f"{r['memory']['peak_ratio']:6.2f}")


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
        return 0
    message = no_cuda_message()
    if message:
        print(message)
        print(f"[gpu-check] it would run {len(variants)} variants: "
              + ", ".join(f"{v.mode}/{v.stage}/{v.method}" for v in variants))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the random model is local; nothing is fetched
    os.environ.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    folder = write_random_llama(args.layers)
    out_dir = Path(tempfile.mkdtemp(prefix="antibody-gpu-check-runs-"))
    try:
        for mode in args.modes:
            report(mode, run_mode(args, folder, mode, out_dir))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    print(f"\n[gpu-check] methods done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    if args.no_tests:
        return 0
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
