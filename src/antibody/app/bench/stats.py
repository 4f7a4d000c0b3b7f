"""The bench's arithmetic, kept free of torch so that it can be checked by hand.

Timing: each method's cost is the median seconds per step of its timed steps pooled over
the rounds, with their IQR (a median, because one step stalled by another process on a
shared machine must not move the figure). Its ratio to SFT is computed per round, as the
quotient of the two methods' median step times within that round, and reported as the
median of the per-round ratios with their range (min, max) as its spread. Why per round:
a round measures every method of a stage within minutes, so a slow period of the machine
moves numerator and denominator together and the per-round ratio cancels much of it,
which a quotient of medians pooled over the whole bench does not; the median then
discards one disturbed round. The range shows what one round alone could have reported.
With the default 3 rounds a range is the honest summary: an IQR of 3 values means
nothing and a bootstrap over 3 rounds has 10 distinct resamples.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from antibody.config.schema import AlignMethod, FinetuneMethod, Stage

REFERENCE = "sft"  # every ratio is to SFT of the same stage, as the papers report costs


class Expected(NamedTuple):
    """Cost per optimiser step relative to SFT, counted in forward+backward passes (F+B) on
    equal-sized batches. Every method here trains a LoRA: its backward computes the
    activations' gradients through every frozen layer (about one forward's FLOPs) and weight
    gradients only for the adapters (under 4% of the embedded model's parameters), so an F+B
    costs about two forwards and a no-grad forward is 1/2 (it would be 1/3 under full
    fine-tuning, whose backward also computes every weight's gradient). Measured: Vaccine's
    first pass, a backward to the hidden states with no weight gradient at all, keeps its
    step at 1.85-1.94x SFT (docs/results/bench.md). ``at_least``: the method has further
    terms that passes do not count."""

    ratio: float
    basis: str
    at_least: bool = False


# a no-grad forward in F+B units, for a LoRA (Expected's docstring)
NO_GRAD_FORWARD = 0.5

# Counted from each method's algorithm (docs/method.md and the modules' docstrings); the
# bench's measured ratios are compared with these, so a method whose cost departs from its
# pass count (an extra pass, a lost no-grad) shows up as a measured ratio far from this.
EXPECTED: dict[Stage, dict[str, Expected]] = {
    Stage.ALIGN: {
        AlignMethod.SFT: Expected(1.0, "1 F+B on the alignment batch"),
        # the first pass finds the hidden-state perturbation, the second trains under it
        AlignMethod.VACCINE: Expected(2.0, "2 F+B: find the hidden-state perturbation, train under it"),
        # g_h, g_h' (harmful loss before and after the simulated step) and g_a
        AlignMethod.BOOSTER: Expected(3.0, "3 F+B: harmful loss, harmful loss after the simulated step, alignment"),
        # Booster's three plus g_r, the refusal loss at the perturbed point (flat_align.py)
        AlignMethod.ANTIBODY: Expected(4.0, "Booster's 3 F+B + the refusal loss at the perturbed point"),
        # harmless and harmful batches each pass once; the MMD-to-noise term on every
        # layer's hidden states and the logit-lens harmful loss add vocabulary projections
        AlignMethod.REPNOISE: Expected(2.0, "2 F+B (harmless, harmful) + MMD and logit-lens terms", at_least=True),
        # Vaccine's two passes on the sampled layers, and every K steps one more backward
        # (to the attention outputs) for the layer probabilities
        AlignMethod.T_VACCINE: Expected(2.0, "Vaccine's 2 F+B on the sampled layers + 1 F+B every K steps", at_least=True),
    },
    Stage.FINETUNE: {
        FinetuneMethod.SFT: Expected(1.0, "1 F+B on the user batch"),
        # log p(y|x) comes from the training forward; log p(y_r|x) needs one no-grad forward
        FinetuneMethod.ANTIBODY: Expected(NO_GRAD_FORWARD + 1, "1 F+B + 1 no-grad forward on the refusal view"),
        # one F+B per step, on an alignment or a user batch; the proximal term is an
        # elementwise pass over the trainable (LoRA) tensors
        FinetuneMethod.LISA: Expected(1.0, "1 F+B (alignment or user state) + the proximal term", at_least=True),
        # the safety demonstrations are rows of the same batch, not extra rows
        FinetuneMethod.SAFEINSTR: Expected(1.0, "1 F+B: safety demonstrations are rows of the batch"),
        # the aligned model's log-probs: one no-grad forward for rows seen the first time
        # (cached by uid), so 1.5 in the first pass over the upload and 1 after
        FinetuneMethod.CONSTRAINED: Expected(NO_GRAD_FORWARD + 1, "1 F+B + 1 no-grad forward for rows seen the first time"),
        # the user batch and an alignment batch each pass once; the scheduler's step is on
        # its N logits only
        FinetuneMethod.BDS: Expected(2.0, "2 F+B: the user batch and an alignment batch"),
    },
}

STAGE_METHODS: dict[Stage, list[str]] = {
    Stage.ALIGN: [m.value for m in AlignMethod],
    Stage.FINETUNE: [m.value for m in FinetuneMethod],
}


def rotated(methods: list[str], round_index: int) -> list[str]:
    """Round r runs the methods starting from the r-th, so that no method always runs first
    (after another stage's work) or last; over len(methods) rounds each takes every place."""
    k = round_index % len(methods)
    return methods[k:] + methods[:k]


def timing_summary(step_seconds: dict[str, list[list[float]]], reference: str = REFERENCE) -> dict[str, dict]:
    """Per method, from its timed step seconds per round (``step_seconds[m][r]``): the
    median and IQR of the pooled steps; the per-round ratios to ``reference``, their median
    and their range (see the module docstring)."""
    ref_rounds = step_seconds[reference]
    out = {}
    for method, rounds in step_seconds.items():
        pooled = np.concatenate(rounds)
        per_round = [float(np.median(r) / np.median(ref)) for r, ref in zip(rounds, ref_rounds, strict=True)]
        out[method] = {
            "median_s": float(np.median(pooled)),
            "iqr_s": [float(q) for q in np.percentile(pooled, [25, 75])],
            "steps_timed": int(pooled.size),
            "ratio": float(np.median(per_round)),
            "round_ratios": per_round,
            "ratio_range": [min(per_round), max(per_round)],
        }
    return out


def memory_ratios(memory: dict[str, dict], reference: str = REFERENCE) -> dict[str, dict]:
    """Each method's peak and over-load memory as a ratio to ``reference``'s (None where a
    figure is missing, e.g. no peak-memory reading on this system)."""
    ref = memory[reference]
    out = {}
    for method, m in memory.items():
        ratios = {}
        for key in ("peak_mib", "over_load_mib"):
            ok = m.get(key) is not None and ref.get(key)
            ratios[key.replace("_mib", "_ratio")] = m[key] / ref[key] if ok else None
        out[method] = {**m, **ratios}
    return out
