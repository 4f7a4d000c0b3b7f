"""The shared training-stage LightningModule: manual optimisation done once, correctly.

Both stages own their loop step (docs/lightning.md ("Manual optimisation"): Lightning refuses
``accumulate_grad_batches`` and ``gradient_clip_val`` under manual optimisation), so this
class implements, for its subclasses:

- gradient accumulation over ``accumulate_grad_batches`` micro-batches: each micro-batch
  loss is divided by N and back-propagated with ``manual_backward`` (precision plugins and
  strategies still apply); the optimiser, the LR scheduler and every step counter advance
  only on window boundaries;
- clipping by global norm with ``self.clip_gradients`` (our config's value);
- non-finite protection: a window whose loss or gradient is inf/NaN (on any rank: the
  ranks agree through an all-reduce) never reaches the optimiser (gradients zeroed, step
  skipped, counted and logged, on every rank alike); more than
  ``max_consecutive_nonfinite`` skipped steps in a row raise ``RuntimeError``;
- an AdamW optimiser over trainable tensors only, with a constant LambdaLR schedule
  (released scripts: constant schedule);
- exact resume: stream position, counters, the subclass's state and, if the checkpoint
  was written inside an accumulation window, the partial gradients, in the checkpoint.

Subclasses implement ``_accumulate_micro_batch`` (forward, backward, buffers, metric
updates), and may extend ``_window_tensors`` / ``_combine_gradients`` /
``_reset_window`` / ``_extra_state`` / ``_load_extra_state``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Optional, Protocol

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from antibody.config.errors import ConfigError
from antibody.config.validate import REFUSED_PRECISIONS
from antibody.data.streams import StreamPlan
from antibody.methods.perturb import all_finite, current_grads, global_norm, trainable_parameters

CHECKPOINT_KEY = "antibody_stage_state"


class StageConfig(Protocol):
    """The fields AlignStageConfig and FinetuneStageConfig share: a module is given its
    stage's config (method.align or method.finetune), never the whole Config."""

    lr: float
    weight_decay: float
    accumulate_grad_batches: int
    gradient_clip_val: Optional[float]
    max_consecutive_nonfinite: int


def _constant_schedule(_: int) -> float:
    # released scripts: constant learning rate (a module-level function so that the
    # scheduler's state_dict stays picklable)
    return 1.0


class StageModule(L.LightningModule):
    """Manual-optimisation base of FlatAlignModule and WeightedFinetuneModule."""

    log_prefix: str = "stage"
    # precision settings whose gradient scaler would see our hand-made gradients unscaled
    # (docs/lightning.md ("Precision"): fp16 GradScaler with SAM-style steps gives NaNs)
    UNSUPPORTED_PRECISION = REFUSED_PRECISIONS  # config/validate.py refuses them at compose

    def __init__(self, model: nn.Module, stage_cfg: StageConfig, metric_names: Iterable[str]):
        super().__init__()
        self.automatic_optimization = False
        self.model = model
        self.stage_cfg = stage_cfg
        self.accumulate = int(stage_cfg.accumulate_grad_batches)
        # the DataModule's resume contract (antibody.data.streams.StreamConsumer): position
        # + 1 of the last item consumed, and what each item holds (None: the stage default)
        self.stream_position = 0
        self.stream_plan: Optional[StreamPlan] = None
        self.micro_step = 0  # micro-batches done inside the current accumulation window
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self._pending: Optional[dict] = None  # mid-window state read from a checkpoint
        # averaged over the micro-batches of one optimiser step, logged at its boundary
        self.step_metrics = nn.ModuleDict({n: MeanMetric(nan_strategy="disable") for n in metric_names})
        # checkpoints hold only what training changes (adapters, metric states): the frozen
        # base weights come from load_model, and saving them would cost ~0.5 GB per
        # checkpoint for SmolLM2 and ~13 GB for a 7B model
        self.strict_loading = False

    # ------------------------------------------------------------------ setup
    def trainable(self) -> list[nn.Parameter]:
        return trainable_parameters(self.model)

    def configure_optimizers(self) -> dict:
        params = self.trainable()
        if not params:
            raise ConfigError("the model has no trainable parameters; enable model.lora or unfreeze weights")
        opt = torch.optim.AdamW(params, lr=self.stage_cfg.lr, weight_decay=self.stage_cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _constant_schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        if precision in self.UNSUPPORTED_PRECISION:
            raise ConfigError(
                f"trainer.precision={precision!r} is not supported by the {self.log_prefix} stage: its "
                "gradient scaler cannot scale the intermediate gradients; use bf16-mixed or 32-true"
            )

    def on_train_start(self) -> None:
        params = self.trainable()
        if self._pending is None:
            # gradients left over from outside this fit (e.g. a probe) must not leak in
            for p in params:
                p.grad = None
            return
        for p, g in zip(params, self._pending["grads"], strict=True):
            p.grad = g.to(device=p.device, dtype=p.dtype)
        self._load_window_tensors(self._pending["window"])
        self._pending = None

    # ------------------------------------------------------------------ step
    def training_step(self, item: Mapping[str, Any], batch_idx: int) -> None:
        self.stream_position = int(item["position"]) + 1
        self._accumulate_micro_batch(item)
        self.micro_step += 1
        if self.micro_step >= self.accumulate:
            self.micro_step = 0
            self._finish_window()

    def _finish_window(self) -> None:
        opt = self.optimizers()
        params = self.trainable()
        step_logs: dict[str, float] = {}
        finite = self._finite_on_every_rank(current_grads(params) + self._window_tensors())
        if finite:
            step_logs.update(self._combine_gradients(params))
            grads = current_grads(params)
            finite = self._finite_on_every_rank(grads)
        if not finite:
            self._skip_step(opt)
            return
        self.consecutive_nonfinite = 0
        step_logs["grad_norm_total"] = float(global_norm(grads))
        if self.stage_cfg.gradient_clip_val:  # None or 0: off
            self.clip_gradients(opt, self.stage_cfg.gradient_clip_val, "norm")
        opt.step()
        self.lr_schedulers().step()
        opt.zero_grad(set_to_none=True)
        self._reset_window()
        step_logs["skipped_steps"] = float(self.skipped_steps)
        self._log_step(step_logs)

    def _finite_on_every_rank(self, tensors: list[Tensor]) -> bool:
        """True when no rank holds an inf/NaN in ``tensors``: one agreed answer.

        Decided after an all-reduce, never from local values alone: window tensors (the
        flat terms) are per replica until ``_combine_gradients`` reduces them, so one rank
        could skip while the others enter that collective, and every rank would hang.
        """
        local = all_finite(tensors)
        if self.trainer.world_size == 1:
            return local
        bad = torch.tensor(0.0 if local else 1.0, device=self.device)
        return float(self.trainer.strategy.reduce(bad, reduce_op="sum")) == 0.0

    def _skip_step(self, opt: Any) -> None:
        opt.zero_grad(set_to_none=True)
        self._reset_window()
        self.skipped_steps += 1
        self.consecutive_nonfinite += 1
        for metric in self.step_metrics.values():
            metric.reset()
        self.log(f"{self.log_prefix}/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        limit = self.stage_cfg.max_consecutive_nonfinite
        if self.consecutive_nonfinite > limit:
            raise RuntimeError(
                f"{self.log_prefix} stage: {self.consecutive_nonfinite} optimiser steps in a row had a "
                f"non-finite loss or gradient (limit method.{self.log_prefix}.max_consecutive_nonfinite="
                f"{limit}); lower the learning rate or rho, or use bf16/fp32"
            )

    def _log_step(self, values: Mapping[str, float]) -> None:
        logs: dict[str, Any] = {f"{self.log_prefix}/{k}": v for k, v in values.items()}
        for name, metric in self.step_metrics.items():
            if metric.update_count:
                logs[f"{self.log_prefix}/{name}"] = metric.compute()
            metric.reset()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)

    def _track(self, name: str, value: Tensor | float) -> None:
        """Add one micro-batch value to the step mean of ``name``."""
        self.step_metrics[name].update(value.detach().float() if isinstance(value, Tensor) else value)

    # ------------------------------------------------------------------ hooks for subclasses
    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _window_tensors(self) -> list[Tensor]:
        """Tensors accumulated outside ``.grad`` during a window (checked for finiteness)."""
        return []

    def _combine_gradients(self, params: list[nn.Parameter]) -> dict[str, float]:
        """Turn the accumulated ``.grad`` into the final update direction; returns step logs."""
        return {}

    def _reset_window(self) -> None:
        """Clear what ``_window_tensors`` holds."""

    def _load_window_tensors(self, tensors: list[Tensor]) -> None:
        if tensors:
            raise RuntimeError("checkpoint holds window tensors this module does not use")

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        frozen = {name for name, p in self.named_parameters() if not p.requires_grad}
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if k not in frozen
            }
        state = {
            "stream_position": self.stream_position,
            "micro_step": self.micro_step,
            "skipped_steps": self.skipped_steps,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "extra": self._extra_state(),
        }
        if self.micro_step:
            # written inside an accumulation window: keep the partial gradients so that the
            # resumed run finishes this window exactly as an uninterrupted run would
            state["pending"] = {
                "grads": [g.detach().cpu().clone() for g in current_grads(self.trainable())],
                "window": [t.detach().cpu().clone() for t in self._window_tensors()],
            }
            if self.trainer.world_size > 1 and state["pending"]["window"]:
                # the window tensors stay per replica until the boundary's reduce (the .grad
                # sums are already averaged by DDP): every rank's are kept, so that each rank
                # resumes with its own (Lightning calls this hook on every rank, rank 0 writes)
                state["pending"]["window_by_rank"] = [
                    self.all_gather(t.detach()).cpu() for t in self._window_tensors()
                ]
        checkpoint[CHECKPOINT_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise RuntimeError(
                f"checkpoint has no '{CHECKPOINT_KEY}': it was not written by a {type(self).__name__}"
            )
        self.stream_position = int(state["stream_position"])
        self.micro_step = int(state["micro_step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.consecutive_nonfinite = int(state["consecutive_nonfinite"])
        self._load_extra_state(state["extra"])
        self._pending = state.get("pending")
        by_rank = (self._pending or {}).pop("window_by_rank", None)
        if by_rank:
            world = self.trainer.world_size
            if by_rank[0].shape[0] != world:
                raise RuntimeError(
                    f"the checkpoint was written inside an accumulation window by {by_rank[0].shape[0]} "
                    f"processes; resume it with as many (now {world}), or from a step-boundary checkpoint"
                )
            self._pending["window"] = [t[self.global_rank] for t in by_rank]
