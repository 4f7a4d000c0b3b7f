"""`bench`: the cost of every method of each stage, measured side by side, as ratios to SFT.

    python -m antibody bench                                  # embedded SmolLM2, CPU
    python -m antibody bench experiment=tiny steps=2          # tiny model: a smoke check
    python -m antibody bench methods=sft,booster repeats=5    # some methods, more rounds

Arguments (the rest are config overrides): ``steps=N`` timed optimiser steps per method
per round (default 3), ``warmup=N`` untimed steps before them (default 1; the first step
builds caches and the data iterator), ``repeats=N`` rounds (default 3),
``methods=a,b,...`` (default: every AlignMethod and FinetuneMethod; SFT, the reference,
always runs in a stage that runs), ``memory=true|false`` (the memory pass, default true),
``precisions=a,b,...`` (``trainer.precision`` values, e.g. ``32-true,bf16-mixed``) or
``clip=a,b,...`` (the global-norm clipping of both stages, ``method.*.gradient_clip_val``;
0 is off, e.g. ``clip=0,1.0``) or ``variants=label:key=value+key=value;label:...`` (any named
sets of overrides, e.g. ``variants='fp32:trainer.precision=32-true;bf16 eager:trainer.precision=bf16-mixed+model.attn_implementation=eager'``):
one axis of variants; every method runs in each, in the
same rounds, and each variant's step time is also given as a ratio to the same method's at
the first variant; default: the config as it is.

Protocol. Every variant is composed from the method's option file (``method=<name>``),
its stage's method key set to the name. Each round trains every method of a stage, in an
order rotated by one per round (bench.stats.rotated), from the same initial weights (a
fresh LoRA drawn from the same seed) on the same batches (the same data seed and
stream), for warmup + steps steps, timing the last ``steps``; bench.stats turns the
times into median seconds per step and into ratios to SFT, taken within each round and
summarised by their median and range over the rounds. Fine-tuning variants
start from a fresh LoRA, not from an aligned adapter: the cost of a step does not depend
on the weights, and ``merge_then_new_adapter`` (which needs an aligned adapter) is not
exercised. Then the memory pass runs each method once more in a fresh process
(bench.memory). Runs on the config's accelerator (the CPU by default).

Duration (measured on 2 quiet CPU cores): ``bench steps=2`` on the embedded model took
40.7 minutes with every method and the repair (2026-12-08; RepNoise's logit lens is the
slowest method, ~50 s/step); the default
steps=3 adds one timed step per method and round. ``experiment=tiny`` took 3.3 minutes
(about half of it the memory pass's fresh interpreters).

Writes ``<run.output_dir>/bench/bench.json`` (``run.name`` overrides ``bench``); render it
into its results page, docs/results/bench.md, with ``python -m antibody report runs/bench/bench.json``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch

from antibody.app.bench.memory import MemoryPassError, measure_in_subprocess, peak_memory
from antibody.app.bench.protocol import Protocol, parse_protocol, variant_args, variant_axis
from antibody.app.bench.repair import expected_repair, repair_summary, time_repair
from antibody.app.bench.stats import (
    EXPECTED,
    REFERENCE,
    memory_ratios,
    rotated,
    timing_summary,
)
from antibody.app.callbacks import StepTimer
from antibody.app.errors import StageInterrupted
from antibody.app.rundir import write_json
from antibody.config import Config, compose
from antibody.config.schema import Stage
from antibody.infra import progress


def method_config(args: list[str], stage: Stage, method: str, max_steps: int) -> Config:
    """The variant's config: the method's option file, with the stage's method key set (an
    option file names both stages' methods; the bench times only this stage's), and the
    stage's max_steps set to the bench's fit, so that anything a module schedules over
    the run (Lisa's states and proximal start, warm-up) happens within the timed steps."""
    return compose([*args, f"method={method}", f"method.{stage.value}.method={method}",
                    f"method.{stage.value}.max_steps={max_steps}"])


def _time_variant(cfg: Config, stage: Stage | str, steps: int, warmup: int = 1, *, tokenizer=None,
                  datamodule=None, memory: bool = False) -> dict:
    """Train one variant for warmup + steps optimiser steps from a fresh, seeded LoRA and
    return the seconds of its last ``steps`` steps (and, with memory, the fit's peak
    memory: bench.memory). Tokenizer and data are built here unless given."""
    from antibody.app.stages import build_datamodule, module_for
    from antibody.models import load_model, load_tokenizer

    stage = Stage(stage)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    dm = datamodule if datamodule is not None else build_datamodule(cfg, tokenizer, stage)
    L.seed_everything(cfg.run.seed, verbose=False)  # new LoRA tensors draw from the global RNG
    model, _ = load_model(cfg.model)
    model.train()  # as train_stage: from_pretrained returns eval mode (LoRA dropout off)
    module = module_for(stage, model, cfg)
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    probe = peak_memory(trainer.strategy.root_device, module) if memory else contextlib.nullcontext({})
    with probe as reading:
        try:
            trainer.fit(module, datamodule=dm)
        except SystemExit:  # Lightning ends a Ctrl-C with sys.exit(1) once it has torn down
            if not trainer.interrupted:
                raise
    if trainer.interrupted:
        raise StageInterrupted(f"bench stopped at step {trainer.global_step}/{warmup + steps}")
    if len(timer.step_times) != warmup + steps:
        raise RuntimeError(f"bench: {len(timer.step_times)} optimiser steps timed, {warmup + steps} expected")
    timed = timer.step_times[warmup:]
    out = {"step_seconds": timed, "steps_timed": len(timed), "fit_seconds": timer.fit_seconds}
    if memory:
        out["memory"] = reading
    return out


def _timing_rounds(args: list[str], protocol: Protocol, bar) -> tuple[dict, dict, dict]:
    """{variant: {stage: {method: [round seconds]}}}, {stage: [order of each round]} and
    {repair method: {"seconds": [of each round], "rows": calibration rows}}.

    Each round runs every variant of a stage (rotated like the methods) before the next
    stage, so a method's variants are timed minutes apart, not a whole pass apart; the
    repairs come last in the round, right after the fine-tuning stage."""
    from antibody.app.repair import calibration_batches
    from antibody.app.stages import build_datamodule
    from antibody.models import load_tokenizer

    n = protocol.warmup + protocol.steps
    by_variant = variant_args(args, protocol)
    configs = {(p, s, m): method_config(a, s, m, n) for p, a in by_variant.items()
               for s, ms in protocol.methods.items() for m in ms}
    tokenizer = load_tokenizer(next(iter(configs.values())).model)
    # all data first: a bad pool fails before any training, and every round reuses it (the
    # data do not depend on the variant)
    first = next(iter(by_variant))
    data = {(s, m): build_datamodule(configs[first, s, m], tokenizer, s) for s, ms in protocol.methods.items()
            for m in ms}
    times: dict = {p: {s: {m: [] for m in ms} for s, ms in protocol.methods.items()} for p in by_variant}
    orders: dict = {s: [] for s in protocol.methods}
    repair_cfgs = {m: compose([*by_variant[first], f"method.repair.method={m}"]) for m in protocol.repairs}
    calibration = {m: calibration_batches(c, tokenizer) for m, c in repair_cfgs.items()}
    repairs: dict = {m: {"seconds": [], "rows": sum(len(b["uid"]) for b in calibration[m])} for m in protocol.repairs}
    for r in range(protocol.repeats):
        for stage, methods in protocol.methods.items():
            orders[stage].append(rotated(methods, r))
            for variant in rotated(list(by_variant), r):
                for method in orders[stage][-1]:
                    bar.update(description=f"bench round {r + 1}/{protocol.repeats}: {stage.value} {method} "
                                           f"{variant}")
                    gc.collect()  # the previous variant's model goes before the next one loads
                    result = _time_variant(configs[variant, stage, method], stage, protocol.steps,
                                           protocol.warmup, tokenizer=tokenizer, datamodule=data[stage, method])
                    times[variant][stage][method].append(result["step_seconds"])
                    bar.advance()
        for method in protocol.repairs:
            bar.update(description=f"bench round {r + 1}/{protocol.repeats}: repair {method}")
            gc.collect()
            repairs[method]["seconds"].append(time_repair(repair_cfgs[method], calibration[method]))
            bar.advance()
    return times, orders, repairs


def _memory_pass(args: list[str], protocol: Protocol, bar) -> dict:
    """{variant: {stage: {method: reading}}}: each variant once, in a process of its own
    (bench.memory)."""
    return {p: _memory_pass_of(a, protocol, bar) for p, a in variant_args(args, protocol).items()}


def _memory_pass_of(args: list[str], protocol: Protocol, bar) -> dict:
    out: dict = {}
    for stage, methods in protocol.methods.items():
        out[stage] = {}
        for method in methods:
            bar.update(description=f"bench memory: {stage.value} {method}")
            try:
                out[stage][method] = measure_in_subprocess({
                    "args": args, "stage": stage.value, "method": method,
                    "steps": protocol.steps, "warmup": protocol.warmup,
                    "threads": torch.get_num_threads(),  # the child computes as the timing rounds did
                })
            except MemoryPassError as exc:  # the timings, maybe half an hour's, are kept
                print(f"[bench] warning: {exc}", file=sys.stderr, flush=True)
                out[stage][method] = {"peak_mib": None, "over_load_mib": None, "error": str(exc).splitlines()[0]}
            bar.advance()
    return out


def memory_child(request_path: str) -> int:
    """The memory pass of one variant (`python -m antibody.app.bench.run <request.json>`)."""
    from antibody.app.logs import configure_logging

    configure_logging()
    req = json.loads(Path(request_path).read_text())
    torch.set_num_threads(req["threads"])
    stage = Stage(req["stage"])
    cfg = method_config(req["args"], stage, req["method"], req["warmup"] + req["steps"])
    result = _time_variant(cfg, stage, req["steps"], req["warmup"], memory=True)
    Path(req["out"]).write_text(json.dumps(result["memory"]))
    return 0


def _stage_results(protocol: Protocol, times: dict, reference_times: dict, orders: dict,
                   memory: dict | None) -> dict:
    """One variant's stages: each method's timing, its ratio to SFT, its ratio to the same
    method at the reference variant (per round, median and range), and its memory."""
    stages = {}
    for stage, methods in protocol.methods.items():
        summary = timing_summary(times[stage])
        mem = memory_ratios(memory[stage]) if memory else {}
        out = {}
        for m in methods:
            vs = timing_summary({"reference": reference_times[stage][m], m: times[stage][m]}, "reference")[m]
            out[m] = {**summary[m], "step_seconds": times[stage][m], "expected": EXPECTED[stage][m]._asdict(),
                      "memory": mem.get(m),
                      "variant_ratio": vs["ratio"], "variant_ratio_range": vs["ratio_range"]}
        stages[stage.value] = {"reference": REFERENCE, "orders": orders[stage], "methods": out}
    return stages


def _summary_line(stage: Stage, method: str, m: dict, variant: str = "", vs_first: bool = False) -> str:
    lo, hi = m["ratio_range"]
    line = (f"[bench] {stage.value} {method}{' ' + variant if variant else ''}: {m['median_s']:.3g} s/step, "
            f"{m['ratio']:.2f}x {REFERENCE} (rounds {lo:.2f}-{hi:.2f}; expected {m['expected']['ratio']:.2f}"
            f"{'+' if m['expected']['at_least'] else ''})")
    if vs_first:
        a, b = m["variant_ratio_range"]
        line += f"; {m['variant_ratio']:.2f}x the first variant's step (rounds {a:.2f}-{b:.2f})"
    mem = m.get("memory")
    if mem and mem.get("peak_mib") is not None:
        line += (f"; peak {mem['peak_mib']:.0f} MiB ({mem['peak_ratio']:.2f}x), "
                 f"over load {mem['over_load_mib']:.0f} MiB ({mem['over_load_ratio']:.2f}x)")
    return line


def bench_command(args: list[str]) -> int:
    protocol, args = parse_protocol(args)
    if not any(a.startswith("run.name=") for a in args):
        args = [*args, "run.name=bench"]
    base = compose(args)
    variants = list(variant_args(args, protocol))
    n_variants = sum(len(ms) for ms in protocol.methods.values()) * len(variants)
    t0 = time.perf_counter()
    total = n_variants * (protocol.repeats + protocol.memory) + len(protocol.repairs) * protocol.repeats
    with progress.task("bench", total=total) as bar:
        times, orders, repair_times = _timing_rounds(args, protocol, bar)
        memory = _memory_pass(args, protocol, bar) if protocol.memory else {}
    by_variant = {p: _stage_results(protocol, times[p], times[variants[0]], orders, memory.get(p))
                  for p in variants}
    stages = by_variant[variants[0]]
    results = {
        "kind": "bench",  # how `python -m antibody report` tells a bench file from a demo's
        "model": base.model.name,
        "device": base.trainer.accelerator,
        "precision": base.trainer.precision,
        "axis": variant_axis(protocol),  # what the variants vary: precision, clipping or named overrides
        "variant": variants[0],  # of "stages"; the others' in "by_variant", with their ratio to it
        "variants": variants,
        # variants=...: each label's overrides, named in the table's caption
        **({"variant_overrides": {label: list(o) for label, o in protocol.variants}}
           if protocol.axis == "variant" else {}),
        "by_variant": {p: {"stages": by_variant[p]} for p in variants[1:]},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "batch_size": {"align": base.data.align_batch_size, "harmful": base.data.harmful_batch_size,
                       "finetune": base.data.finetune_batch_size},
        "max_length": base.data.max_length,
        "protocol": {"steps": protocol.steps, "warmup": protocol.warmup, "repeats": protocol.repeats,
                     "memory": protocol.memory, "finetune_init": "fresh LoRA (merge_then_new_adapter not exercised)"},
        "stages": stages,
        # one-shot repairs, in SFT fine-tuning steps of the same round (bench.repair), first variant
        "repair": {m: repair_summary(r["seconds"], times[variants[0]][Stage.FINETUNE][REFERENCE],
                                     expected_repair(base, r["rows"]))
                   for m, r in repair_times.items()},
        "wall_seconds": time.perf_counter() - t0,
    }
    out = Path(base.run.output_dir) / base.run.name / "bench.json"
    write_json(out, results)
    for variant in variants:
        for stage, methods in protocol.methods.items():
            for method in methods:
                m = by_variant[variant][stage.value]["methods"][method]
                label = variant if len(variants) > 1 else ""
                print(_summary_line(stage, method, m, label, vs_first=variant != variants[0]), flush=True)
    for method, m in results["repair"].items():
        lo, hi = m["ratio_range"]
        print(f"[bench] repair {method}: {m['median_s']:.3g} s once, {m['ratio']:.2f} SFT fine-tuning steps "
              f"(rounds {lo:.2f}-{hi:.2f}; expected {m['expected']['ratio']:.2f})", flush=True)
    print(f"[bench] wrote {out} ({results['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(memory_child(sys.argv[1]))
