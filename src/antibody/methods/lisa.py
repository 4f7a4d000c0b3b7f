"""Lisa (Huang et al. 2024, "Lisa: Lazy Safety Alignment for Large Language Models against
Harmful Fine-tuning"): bi-state fine-tuning.

The provider alternates two states during the user's fine-tuning run:

- GUIDE (the alignment state): K_align optimiser steps of plain token-mean NLL on the
  provider's alignment split (harmful prompt -> refusal, plus its benign rows), the
  ``guide`` stream;
- USER: K_user steps on the user's upload with the configured weighting (uniform for
  plain Lisa), exactly the steps of WeightedFinetuneModule.

A run starts in the GUIDE state (ours, by design: the first user phase then already has
the alignment state's parameters to be pulled towards, and no user step runs before a
guide step has). Once the optimiser step reaches ceil(proximal_after * max_steps), each
step adds the gradient of the proximal term rho/2 ||theta - theta_other||^2, i.e.
rho * (theta - theta_other), to the accumulated gradient; theta_other are the trainable
parameters as they were when the OTHER state last ended (none before the first switch,
so the term is then off). That is where the current phase started, so the first step of
a phase adds nothing. Released scripts: rho 0.01, 100 alignment steps per 900 user steps,
the proximal term after 10% of the steps, up to 10,000 alignment samples in the guide set
(here the guide set is the whole alignment split, sized by data.alignment.*).

Scaling rule (ours, docs/method.md ("Lisa")): a run shorter than min_cycles released
cycles (min_cycles * (align_steps + user_steps) steps) gets cycles of
C = max(2, floor(max_steps / min_cycles)) steps, K_align = C * align_steps /
(align_steps + user_steps) rounded half up, at least 1 and at most C - 1, and
K_user = C - K_align: the released split, at least min_cycles times. E.g. 30 steps:
10-step cycles of 1 + 9.

The schedule is a pure function of (optimiser step, config) (`LisaSchedule`); the step of
micro-batch ``position`` is position // accumulate_grad_batches, so every micro-batch of a
step belongs to that step's state. A skipped (non-finite) step consumed its batches and
counts as a step of the schedule. `LisaPlan` tells the DataModule which stream each
position holds: exactly one, GUIDE or USER, with index = the number of earlier positions
in that stream, so Lisa's j-th user micro-batch is the SFT run's user batch j.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from antibody.config.baselines import LisaConfig
from antibody.config.schema import FinetuneStageConfig
from antibody.data.streams import TrainStream
from antibody.methods.losses import sequence_nll
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from antibody.methods.weights import LossForm


class LisaState(IntEnum):
    """The two states; the values are what ``finetune/lisa_state`` logs."""

    GUIDE = 0
    USER = 1

    @property
    def other(self) -> LisaState:
        return LisaState.USER if self is LisaState.GUIDE else LisaState.GUIDE


@dataclass(frozen=True)
class LisaSchedule:
    """Which state optimiser step ``step`` is in, and when the proximal term is on."""

    guide_steps: int  # K_align per cycle
    user_steps: int  # K_user per cycle
    proximal_from: int  # first optimiser step with the proximal term

    @classmethod
    def from_config(cls, lisa: LisaConfig, max_steps: int) -> LisaSchedule:
        k_align, k_user = int(lisa.align_steps), int(lisa.user_steps)
        released = k_align + k_user
        if max_steps < lisa.min_cycles * released:
            cycle = max(2, max_steps // lisa.min_cycles)
            # rounded half up in exact arithmetic (round() would round 0.5 to even)
            share = math.floor(Fraction(cycle * k_align, released) + Fraction(1, 2))
            k_align = min(cycle - 1, max(1, share))  # both states occur in every cycle
            k_user = cycle - k_align
        # on the decimal the config wrote (0.1 * 30 is 3.0000000000000004 in floats)
        proximal_from = math.ceil(Fraction(repr(float(lisa.proximal_after))) * int(max_steps))
        return cls(k_align, k_user, proximal_from)

    @property
    def cycle(self) -> int:
        return self.guide_steps + self.user_steps

    def state(self, step: int) -> LisaState:
        return LisaState.GUIDE if step % self.cycle < self.guide_steps else LisaState.USER

    def guide_steps_before(self, step: int) -> int:
        """GUIDE steps among steps 0 .. step - 1."""
        cycles, rest = divmod(step, self.cycle)
        return cycles * self.guide_steps + min(rest, self.guide_steps)

    def proximal_on(self, step: int) -> bool:
        return step >= self.proximal_from


@dataclass(frozen=True)
class LisaPlan:
    """Lisa's stream plan (antibody.data.streams.StreamPlan): position -> one stream."""

    schedule: LisaSchedule
    accumulate: int
    streams: ClassVar[tuple[TrainStream, ...]] = (TrainStream.GUIDE, TrainStream.USER)

    def step_of(self, position: int) -> tuple[int, int]:
        """(optimiser step, micro-batch within it) of a stream position."""
        return divmod(int(position), self.accumulate)

    def at(self, position: int) -> dict[TrainStream, int]:
        step, micro = self.step_of(position)
        guide_before = self.schedule.guide_steps_before(step)
        if self.schedule.state(step) is LisaState.GUIDE:
            return {TrainStream.GUIDE: guide_before * self.accumulate + micro}
        return {TrainStream.USER: (step - guide_before) * self.accumulate + micro}


class LisaFinetuneModule(WeightedFinetuneModule):
    """Fine-tuning with Lisa's alternating states (module docstring).

    Items follow ``stream_plan``: ``{"guide": batch, "position": k}`` or
    ``{"user": batch, "position": k}``. User steps are WeightedFinetuneModule's steps
    (weighting, weight records and detector AUROCs cover user rows only); guide steps are
    plain token-mean NLL, logged as ``finetune/guide_loss``. Each step also logs
    ``finetune/lisa_state`` (0 guide, 1 user) and ``finetune/proximal_norm``, the norm of
    the gradient rho * (theta - theta_other) it added (0 while the term is off).
    ``max_steps`` defaults to method.finetune.max_steps (the trainer's limit in a run).
    """

    def __init__(
        self,
        model: nn.Module,
        ft: FinetuneStageConfig,
        loss_form: Optional[LossForm] = None,
        detector_window: Optional[int] = None,
        score_refusal: Optional[bool] = None,
        max_steps: Optional[int] = None,
    ):
        super().__init__(model, ft, loss_form, detector_window, score_refusal)
        lisa = ft.lisa
        self.rho = float(lisa.rho)
        steps = ft.max_steps if max_steps is None else max_steps
        self.schedule = LisaSchedule.from_config(lisa, int(steps))
        self.stream_plan = LisaPlan(self.schedule, self.accumulate)
        self.step_metrics["guide_loss"] = MeanMetric(nan_strategy="disable")
        self._step = 0  # optimiser step of the window in progress
        self._state: Optional[LisaState] = None  # state of that window (None before the first)
        # per state: its trainable tensors when it last ended (theta_other of the other state)
        self._anchors: dict[LisaState, list[Tensor]] = {}

    # ------------------------------------------------------------------ micro-batch
    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        step, micro = self.stream_plan.step_of(item["position"])
        if micro != self.micro_step:
            raise RuntimeError(
                f"stream position {item['position']} is micro-batch {micro} of its step, but the "
                f"accumulation window holds {self.micro_step}: the stream did not start at a window"
            )
        state = self.schedule.state(step)
        if micro == 0:
            self._enter(state)
        self._step, self._state = step, state  # also right after a resume inside a window
        key = TrainStream.GUIDE.value if state is LisaState.GUIDE else TrainStream.USER.value
        if key not in item:
            raise RuntimeError(
                f"step {step} is a {state.name.lower()} step but item {item['position']} holds "
                f"{sorted(k for k in item if k != 'position')}: the DataModule must honour stream_plan"
            )
        if state is LisaState.GUIDE:
            nll = sequence_nll(self.model, item[key])
            # the token mean over the global batch under DDP (docs/multi-gpu.md)
            self.manual_backward(self.global_token_mean(nll) / self.accumulate)
            self._track("guide_loss", nll.token_mean())
        else:
            super()._accumulate_micro_batch(item[key])

    def _enter(self, state: LisaState) -> None:
        """Start a window; on a switch, the parameters now are where the last state ended."""
        if self._state is not None and state is not self._state:
            self._anchors[self._state] = [p.detach().clone() for p in self.trainable()]

    def _combine_gradients(self, params: list[nn.Parameter]) -> dict[str, float]:
        logs = super()._combine_gradients(params)
        state = self._state
        assert state is not None, "a window ended before it started"
        anchor = self._anchors.get(state.other)
        norms: list[Tensor] = []
        if anchor is not None and self.schedule.proximal_on(self._step):
            for p, a in zip(params, anchor, strict=True):
                pull = (p.detach() - a) * self.rho  # d/dtheta of rho/2 ||theta - theta_other||^2
                p.grad = pull if p.grad is None else p.grad.add_(pull)
                norms.append(pull.float().norm())
        logs["lisa_state"] = float(state)
        # one device sync per step, not one per tensor
        logs["proximal_norm"] = float(torch.stack(norms).norm()) if norms else 0.0
        return logs

    def on_train_start(self) -> None:
        super().on_train_start()
        # anchors read from a checkpoint are on the CPU: move them once, not every step
        params = self.trainable()
        for state, tensors in self._anchors.items():
            self._anchors[state] = [
                t.to(device=p.device, dtype=p.dtype) for t, p in zip(tensors, params, strict=True)
            ]

    # ------------------------------------------------------------------ checkpoints
    def _extra_state(self) -> dict:
        state = super()._extra_state()
        state["lisa"] = {
            "state": None if self._state is None else int(self._state),
            "anchors": {int(s): [t.detach().cpu().clone() for t in ts] for s, ts in self._anchors.items()},
        }
        return state

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        super()._load_extra_state(state)
        lisa = state["lisa"]
        self._state = None if lisa["state"] is None else LisaState(lisa["state"])
        self._anchors = {LisaState(s): list(ts) for s, ts in lisa["anchors"].items()}
