"""The bench's repair stage: a repair trains nothing, so its cost is one wall time (Antidote:
the calibration forward over its harmful rows and the pruning), given in units of the SFT
fine-tuning step timed in the same round: "this repair costs as much as k fine-tuning steps".

Expected, counted in passes like the training stages (bench.stats.EXPECTED): one no-grad
forward (1/2 of a LoRA's forward+backward, bench.stats.NO_GRAD_FORWARD) over R calibration
rows, against an SFT step's one forward+backward over B user rows: R / (2 B) steps, at equal
row lengths.
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np

from antibody.app.bench.stats import NO_GRAD_FORWARD, Expected
from antibody.config import Config
from antibody.config.schema import RepairMethod

REPAIR_METHODS = [m.value for m in RepairMethod if m is not RepairMethod.NONE]


def expected_repair(cfg: Config, rows: int) -> Expected:
    b = cfg.data.finetune_batch_size
    return Expected(rows * NO_GRAD_FORWARD / b,
                    f"1 no-grad forward over {rows} calibration rows = {rows}/(2 x {b}) SFT steps")


def time_repair(cfg: Config, batches: list[dict]) -> float:
    """Seconds of one Antidote repair (calibration and pruning; the model load excluded) on a
    fresh, seeded LoRA: the cost does not depend on the adapter's values."""
    from antibody.methods.antidote import antidote_prune
    from antibody.models import load_model

    L.seed_everything(cfg.run.seed, verbose=False)
    model, _ = load_model(cfg.model)
    t0 = time.perf_counter()
    antidote_prune(model, batches, cfg.method.repair.antidote.dense_ratio)
    return time.perf_counter() - t0


def repair_summary(seconds: list[float], sft_step_rounds: list[list[float]], expected: Expected) -> dict:
    """Per round, the repair's seconds over that round's median SFT fine-tuning step; the
    median over rounds and their range, as bench.stats.timing_summary does for the stages."""
    per_round = [s / float(np.median(ref)) for s, ref in zip(seconds, sft_step_rounds, strict=True)]
    return {"median_s": float(np.median(seconds)), "seconds": seconds,
            "ratio": float(np.median(per_round)), "round_ratios": per_round,
            "ratio_range": [min(per_round), max(per_round)], "expected": expected._asdict()}
