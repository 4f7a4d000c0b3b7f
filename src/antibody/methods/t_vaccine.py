"""T-Vaccine alignment (Liu et al., "Targeted Vaccine"; released: Lslland/T-Vaccine,
`trainer.py`, class `BaseTrainer`; run by `script/alignment/T-Vaccine.sh`).

Vaccine's step (methods/vaccine.py) on a few layers at a time:

- Every `probability_steps` (K) optimiser steps, a D_harm batch's alignment loss is
  differentiated with respect to every layer's attention output; layer l is then sampled
  with probability ||g_l|| / sum_m ||g_m|| (released `after_gradient_magnitude_step`).
- Every `interval_steps` (J) steps, `activated_layers` (S) distinct layers are drawn with
  those probabilities (released `switch_active_layers`, numpy's choice without replacement;
  here a generator seeded by (run.seed, step), so that a resumed run draws the same).
- Each step is Vaccine's two passes with the hidden-state perturbation on the active
  layers' attention outputs only, its norm rho over those layers; and the LoRA tensors
  inside the inactive layers' attention modules take no update (released
  `unfreeze_activate_layers` freezes them; here their gradients are dropped before the
  optimiser step, which AdamW then skips as it skips a frozen tensor). LoRA tensors
  outside the attention modules (the MLP's, when LoRA targets them) train every step, as
  in the released code.

The released code also passes the active layers (and, past 26 layers, each one's
predecessor) to its own copies of the transformers model files, which use them to
checkpoint the other layers' activations: memory only, not the update; not reproduced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from antibody.config.baselines import TVaccineConfig
from antibody.config.schema import AlignStageConfig
from antibody.data.streams import LockstepPlan, TrainStream
from antibody.methods.losses import token_mean_nll
from antibody.methods.vaccine import VaccineAlignModule, hidden_state_gradients, recorded_hidden_states


def layer_probabilities(model: nn.Module, blocks: list[nn.Module], harmful: Mapping[str, Tensor]) -> list[float]:
    """Each block's share of the total harmful-gradient norm at its output."""
    with recorded_hidden_states(blocks) as hidden:
        loss = token_mean_nll(model, harmful)
    grads = hidden_state_gradients(loss, hidden)
    norms = [float(torch.linalg.vector_norm(g.float())) for g in grads]
    total = sum(norms)
    if not total > 0:
        return [1.0 / len(norms)] * len(norms)  # no signal: every layer equally likely
    return [n / total for n in norms]


def draw_layers(probability: list[float], k: int, seed: int, step: int) -> list[int]:
    """`k` distinct layer indices drawn with `probability`, sorted; seeded by (seed, step)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step)]))
    p = np.asarray(probability, dtype=np.float64)
    return sorted(int(i) for i in rng.choice(len(p), size=min(k, len(p)), replace=False, p=p / p.sum()))


class TVaccineAlignModule(VaccineAlignModule):
    """Vaccine on the sampled layers (see the module doc)."""

    def __init__(self, model: nn.Module, align: AlignStageConfig, *, seed: int):
        super().__init__(model, align)
        self.settings: TVaccineConfig = align.t_vaccine
        self.rho = float(self.settings.rho)
        self.seed = int(seed)
        self.all_blocks = list(self.blocks)
        # D_harm is read every K steps for the layer probabilities
        self.stream_plan = LockstepPlan((TrainStream.ALIGN, TrainStream.HARMFUL))
        self.probability: Optional[list[float]] = None
        self.active: list[int] = []
        self._block_lora = [[p for n, p in b.named_parameters() if "lora_" in n and p.requires_grad]
                            for b in self.all_blocks]

    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        s, step = self.settings, int(self.global_step)
        if self.micro_step == 0:  # the first micro-batch of an optimiser step
            if self.probability is None or step % s.probability_steps == 0:
                self.probability = layer_probabilities(self.model, self.all_blocks, item["harmful"])
            if not self.active or step % s.interval_steps == 0:
                self.active = draw_layers(self.probability, s.activated_layers, self.seed, step)
        self.blocks = [self.all_blocks[i] for i in self.active]
        try:
            super()._accumulate_micro_batch(item)
        finally:
            self.blocks = self.all_blocks

    def _combine_gradients(self, params: list[nn.Parameter]) -> dict[str, float]:
        active = set(self.active)
        with torch.no_grad():
            for i, lora in enumerate(self._block_lora):
                if i not in active:
                    for p in lora:
                        p.grad = None  # frozen this step: no update, no decay, no moment change
        return {**super()._combine_gradients(params), "active_layers": float(len(active))}

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "probability": self.probability, "active": list(self.active)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        super()._load_extra_state(state)
        self.probability = state.get("probability")
        self.active = list(state.get("active") or [])
