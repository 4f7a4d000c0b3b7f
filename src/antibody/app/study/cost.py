"""Cost before spending: a study's GPU-hours from counted FLOPs at a named accelerator's rate.

    python -m antibody study conf/study/paper_main.yaml --dry-run --gpu h100

Counted, not measured (``make bench`` and finished jobs measure):
- a training step: 6 x parameters x tokens (forward 2, backward 4 per parameter and
  token), tokens = batch x max_length x accumulation (max_length bounds each row: padding
  to the batch's longest row is counted as if every row were full), times the method's
  forward+backward passes relative to SFT (``bench.stats.EXPECTED``, the figures the bench
  checks its measurements against). 6 N counts the frozen weights' gradient that LoRA does
  not compute (about 4 N is the LoRA floor): an upper bound of the arithmetic.
- an evaluation: 2 x parameters x tokens for each prompt (``PROMPT_TOKENS`` of prompt plus
  every new token allowed, as if no answer stopped early), and 2 x the judge's parameters
  x the same tokens for each harmful answer when the judge is a model (beaver-dam, or the
  probe judge's backbone; the incoherence signal's second backbone pass is not counted).
Seconds = FLOPs / (peak bf16 rate x utilisation). The utilisations are assumptions, stated
in the output: training at ``TRAIN_UTILISATION``, generation at ``GENERATION_UTILISATION``
(decoding one token at a time is bound by memory bandwidth, not arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from antibody.config import Config
from antibody.config.schema import JudgeKind, ModelSource, Stage

# Training and generation utilisation of the peak bf16 rate: assumptions, not measurements
# (ours; LoRA fine-tuning of a 7B model with Hugging Face code usually lands between 30 and
# 50% of peak; batched greedy decoding far lower).
TRAIN_UTILISATION = 0.4
GENERATION_UTILISATION = 0.1
PROMPT_TOKENS = 64  # ours, assumed mean prompt length of the evaluation sets (chat template included)


class Accelerator(StrEnum):
    H100 = "h100"
    A100 = "a100"
    L40S = "l40s"
    CPU = "cpu"  # this machine: its rate is measured (``cpu_matmul_flops``), not a datasheet's


@dataclass(frozen=True)
class Peak:
    flops: float  # dense bf16 FLOP/s
    source: str


# NVIDIA datasheets, dense (no sparsity) BF16 Tensor Core figures.
PEAKS: dict[Accelerator, Peak] = {
    Accelerator.H100: Peak(989.4e12, "NVIDIA H100 datasheet, SXM5, BF16 dense"),
    Accelerator.A100: Peak(312e12, "NVIDIA A100 datasheet, SXM4, BF16 dense"),
    Accelerator.L40S: Peak(362.05e12, "NVIDIA L40S datasheet, BF16 dense"),
}

# Parameter counts of the models our configs name, so that no weights (and, for the hub,
# no config.json, unreadable offline) are needed to price a study. Hub models: their
# Hugging Face model cards; the embedded model: the shapes of the converted folder, counted
# with `AutoModelForCausalLM.from_config(config)` on the meta device.
PARAMETERS: dict[str, float] = {
    "llama2-7b": 6.738e9,  # meta-llama/Llama-2-7b-hf
    "gemma2-9b": 9.242e9,  # google/gemma-2-9b
    "qwen2-7b": 7.616e9,  # Qwen/Qwen2-7B
    "smollm2-135m-instruct": 134_515_008,  # ours, counted as above
}
BEAVER_DAM_PARAMETERS = 6.738e9  # PKU-Alignment/beaver-dam-7b: Llama-7B with a score head


def model_parameters(cfg: Config) -> float:
    """Parameters of the model a config trains, without loading any weights."""
    if cfg.model.source is ModelSource.TINY:
        import torch
        from transformers import LlamaForCausalLM

        from antibody.models import load_tokenizer
        from antibody.models.tiny import tiny_llama_config

        with torch.device("meta"):  # shapes only: no memory, no weights
            model = LlamaForCausalLM(tiny_llama_config(cfg.model.tiny, load_tokenizer(cfg.model)))
        return float(sum(p.numel() for p in model.parameters()))
    try:
        return float(PARAMETERS[cfg.model.name])
    except KeyError:
        raise ValueError(f"no parameter count for model {cfg.model.name!r}: add it to app/study/cost.py "
                         "PARAMETERS") from None


def judge_parameters(cfg: Config) -> float:
    """The judge's parameters when it is a model: beaver-dam, or the probe judge's frozen backbone."""
    if cfg.eval.judge is JudgeKind.BEAVER_DAM:
        return BEAVER_DAM_PARAMETERS
    if cfg.eval.judge is JudgeKind.PROBE:
        return float(PARAMETERS.get(cfg.eval.probe_model, 0.0))
    return 0.0


def training_flops(cfg: Config, stage: Stage, steps: int, params: float) -> float:
    from antibody.app.bench.stats import EXPECTED
    from antibody.app.study.plan import stage_method

    d = cfg.data
    batch, accumulate = ((d.align_batch_size, cfg.method.align.accumulate_grad_batches) if stage is Stage.ALIGN
                         else (d.finetune_batch_size, cfg.method.finetune.accumulate_grad_batches))
    passes = EXPECTED[stage][stage_method(cfg, stage)].ratio
    return 6 * params * batch * d.max_length * accumulate * passes * steps


def evaluation_flops(cfg: Config, params: float) -> float:
    e = cfg.data.eval
    answer = cfg.eval.max_new_tokens
    harmful = e.n_harmful + e.n_harmful_second
    prompts = [(harmful + e.n_benign + e.n_benign_edgy, answer), (e.n_task, cfg.task.max_new_tokens)]
    generation = sum(2 * params * n * (PROMPT_TOKENS + new) for n, new in prompts)
    return generation + 2 * judge_parameters(cfg) * harmful * (PROMPT_TOKENS + answer)


def repair_flops(cfg: Config, params: float) -> float:
    """Antidote's calibration: one forward (2 N per token) over its harmful rows, each counted
    at data.max_length (an upper bound: rows are as long as they are)."""
    rows = cfg.method.repair.antidote.n_samples or cfg.data.alignment.n_harmful_answers
    return 2 * params * rows * cfg.data.max_length


def cpu_matmul_flops(n: int = 2048, repeats: int = 7) -> float:
    """This machine's fp32 matmul rate at torch's thread count (median of ``repeats``): the
    CPU's "peak" for comparing the count with a study measured on it."""
    import statistics
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(seconds)


@dataclass(frozen=True)
class Estimate:
    """Counted FLOPs and hours per stage (align, finetune, eval), for every job and for those left."""

    accelerator: Accelerator
    peak_flops: float
    peak_source: str
    flops: dict[str, float]
    flops_left: dict[str, float]
    hours: dict[str, float]
    hours_left: dict[str, float]


STAGES = ("align", "finetune", "eval")


def utilisation(accelerator: Accelerator) -> dict[str, float]:
    """Share of the peak each stage is assumed to reach. On the CPU the peak is the rate a
    matmul measured, so 1: the count at that rate is a floor, and its ratio to a study's
    measured time says how far runs are from it (docs/calibration.md, "Counted cost")."""
    if accelerator is Accelerator.CPU:
        return dict.fromkeys(STAGES, 1.0)
    return {"align": TRAIN_UTILISATION, "finetune": TRAIN_UTILISATION, "eval": GENERATION_UTILISATION}


def estimate(train: list[tuple[Config, Stage, bool]], evaluations: list[tuple[Config, bool]],
             accelerator: Accelerator) -> Estimate:
    """``train``: (config, stage, done) per training job; ``evaluations``: (config, done) per
    model to evaluate. Hours at the accelerator's peak x the stated utilisation."""
    if accelerator is Accelerator.CPU:
        peak, source = cpu_matmul_flops(), "this machine's fp32 matmul rate, measured now"
    else:
        peak, source = PEAKS[accelerator].flops, PEAKS[accelerator].source
    params: dict[str, float] = {}

    def n(cfg: Config) -> float:
        if cfg.model.name not in params:
            params[cfg.model.name] = model_parameters(cfg)
        return params[cfg.model.name]

    flops = dict.fromkeys(STAGES, 0.0)
    left = dict.fromkeys(STAGES, 0.0)
    for cfg, stage, done in train:
        if stage is Stage.REPAIR:  # a forward pass over the calibration rows: inference, counted with eval
            f = repair_flops(cfg, n(cfg))
            flops["eval"] += f
            left["eval"] += 0.0 if done else f
            continue
        steps = cfg.method.align.max_steps if stage is Stage.ALIGN else cfg.method.finetune.max_steps
        f = training_flops(cfg, stage, steps, n(cfg))
        flops[stage.value] += f
        left[stage.value] += 0.0 if done else f
    for cfg, done in evaluations:
        f = evaluation_flops(cfg, n(cfg))
        flops["eval"] += f
        left["eval"] += 0.0 if done else f

    util = utilisation(accelerator)

    def hours(per_stage: dict[str, float]) -> dict[str, float]:
        return {s: per_stage[s] / (peak * util[s]) / 3600 for s in STAGES}

    return Estimate(accelerator, peak, source, flops, left, hours(flops), hours(left))


def estimate_text(e: Estimate) -> str:
    """The dry run's lines on counted cost."""
    unit = "CPU-hours" if e.accelerator is Accelerator.CPU else "GPU-hours"
    cells = ", ".join(f"{s} {e.hours[s]:.3g}" for s in STAGES)
    left = ", ".join(f"{s} {e.hours_left[s]:.3g}" for s in STAGES)
    util = utilisation(e.accelerator)
    return (
        f"Counted cost on one {e.accelerator.value} ({e.peak_flops / 1e12:.4g} TFLOP/s: {e.peak_source}; "
        f"assumed utilisation {util['align']:.0%} training, {util['eval']:.0%} generation; "
        f"FLOPs: 6 x parameters x tokens per training pass x the method's passes, 2 x parameters x tokens "
        f"per generated answer, app/study/cost.py): {unit} {cells}; total {sum(e.hours.values()):.3g} "
        f"({sum(e.flops.values()):.3g} FLOPs). Left to run: {left}; total {sum(e.hours_left.values()):.3g}."
    )
