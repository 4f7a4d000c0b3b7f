"""Lightning callbacks used by every stage."""

from __future__ import annotations

import time

import lightning as L
import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall seconds per optimizer step (the first step, which warms up caches, is excluded)."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self._t0: float | None = None
        self._last_step = 0
        self.fit_seconds = 0.0
        self._fit_t0 = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_t0 = time.perf_counter()
        self._last_step = trainer.global_step
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._last_step:  # an optimizer step happened
            _synchronize(pl_module.device)  # CUDA runs asynchronously: time the work, not its launch
            now = time.perf_counter()
            if self._t0 is not None:
                self.step_times.append(now - self._t0)
            self._t0 = now
            self._last_step = trainer.global_step

    def on_fit_end(self, trainer, pl_module) -> None:
        _synchronize(pl_module.device)
        self.fit_seconds = time.perf_counter() - self._fit_t0

    def summary(self) -> dict:
        steady = self.step_times[1:] if len(self.step_times) > 1 else self.step_times
        mean = sum(steady) / len(steady) if steady else float("nan")
        return {
            "seconds_per_step": mean,
            "steps_timed": len(steady),
            "fit_seconds": self.fit_seconds,
        }


class ProgressLines(L.Callback):
    """Training progress as log lines (antibody.infra.progress.Lines): step k/N, time per
    step, ETA and the last logged loss, every few steps or seconds; what a batch job's log
    and a run's log.txt show where a terminal shows Lightning's bar. Rank zero only."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._lines = None
        self._last_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        from antibody.infra.progress import Lines

        if trainer.is_global_zero:
            self._lines = Lines(self.description, total=trainer.max_steps, completed=trainer.global_step)
            self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._lines is None or trainer.global_step == self._last_step:
            return
        self._last_step = trainer.global_step
        self._lines.completed = trainer.global_step
        loss = next((v for k, v in trainer.callback_metrics.items() if k.endswith("/loss") and torch.is_tensor(v)), None)
        if loss is not None:
            self._lines.note = f"loss {float(loss):.4g}"
        self._lines.report()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._lines is not None:
            self._lines.finish()
            self._lines = None
