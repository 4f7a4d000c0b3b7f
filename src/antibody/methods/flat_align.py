"""Stage 1: flat alignment (SFT, Booster, Antibody) as one manual-optimisation module.

Per micro-batch (paper, stage 1; docs/method.md ("Stage 1")), with theta the trainable tensors:

1. g_h  = grad L_harm(theta)                      (autograd.grad: ``.grad`` untouched)
2. theta' = theta - rho g_h / (||g_h|| + eps)      (in place, trainable tensors only)
3. g_h' = grad L_harm(theta'), g_r = grad L_refusal(theta')
4. theta restored from a snapshot (copy_, bit-exact)
5. g_a  = grad L_align(theta)                     (manual_backward into ``.grad``)

That is 4 forward/backward passes and no model copy (the released code: 5 passes and a
deep copy). SFT runs step 5 only. With lambda2 = 0 (Booster) g_r is not needed, so
Booster runs 3 passes; ``method.align.log_refusal_loss=true`` adds a no-grad forward
that logs the refusal loss at the perturbed point.

Accumulation semantics (ours, documented): over a window of N micro-batches, the flat
terms are per micro-batch (each micro-batch perturbs along its own harmful gradient, as
SAM does with micro-batches) and averaged: S = mean_k (g_h,k - g_h',k),
R = mean_k g_r,k, A = mean_k g_a,k. lambda_t is a per-optimiser-step quantity, computed
once at the boundary from the window averages A and S, so the EMA of ``cosine_ema``
advances once per step whatever N is. The update is A + lambda_t S + lambda2 R; with
N = 1 this is exactly the paper's g (docs/method.md). With N identical micro-batches it equals one step
on their concatenation.

Distributed: the flat terms are computed per replica and their window averages are
explicitly averaged across ranks (``strategy.reduce``) before lambda_t, so every rank
computes the same lambda_t and update (g_a is averaged by the strategy's backward).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from antibody.config.schema import AlignMethod, AlignStageConfig, LambdaMode
from antibody.data.streams import LockstepPlan, TrainStream
from antibody.methods.base import StageModule
from antibody.methods.lambdas import LambdaParams, LambdaState, compute_lambda, cosine
from antibody.methods.losses import token_mean_nll
from antibody.methods.perturb import (
    ParameterSnapshot,
    current_grads,
    descend_,
    flatten,
    global_norm,
    grads_of,
    unflatten_like,
)


@dataclass(frozen=True)
class AlignSettings:
    """What one alignment method actually runs (recorded with the run)."""

    method: AlignMethod
    flat: bool  # run the flatness passes (g_h, g_h', g_r)
    lambda_mode: LambdaMode
    lambda_params: LambdaParams
    lambda2: float
    rho: float


def _sft(cfg: AlignStageConfig) -> AlignSettings:
    # plain supervised alignment: lambda = lambda2 = 0, so the flat passes are skipped
    return AlignSettings(AlignMethod.SFT, False, LambdaMode.CONSTANT, LambdaParams(lam=0.0), 0.0, cfg.rho)


def _booster(cfg: AlignStageConfig) -> AlignSettings:
    # Booster: constant lambda, no refusal term (Booster scripts: lambda 5, rho 0.1)
    if cfg.lambda_mode is not LambdaMode.CONSTANT or cfg.lambda2 != 0.0:
        rank_zero_warn(
            f"method.align.method=booster runs lambda_mode=constant and lambda2=0; ignoring "
            f"method.align.lambda_mode={cfg.lambda_mode.value} and method.align.lambda2={cfg.lambda2}"
        )
    return AlignSettings(
        AlignMethod.BOOSTER, True, LambdaMode.CONSTANT, LambdaParams.from_config(cfg), 0.0, cfg.rho
    )


def _antibody(cfg: AlignStageConfig) -> AlignSettings:
    return AlignSettings(
        AlignMethod.ANTIBODY, True, cfg.lambda_mode, LambdaParams.from_config(cfg), cfg.lambda2, cfg.rho
    )


# the alignment methods this module runs (the others have modules of their own: methods.registry)
FLAT_METHODS: dict[AlignMethod, Callable[[AlignStageConfig], AlignSettings]] = {
    AlignMethod.SFT: _sft,
    AlignMethod.BOOSTER: _booster,
    AlignMethod.ANTIBODY: _antibody,
}


def resolve_align_settings(cfg: AlignStageConfig) -> AlignSettings:
    if cfg.method not in FLAT_METHODS:
        raise ValueError(f"FlatAlignModule does not run method.align.method={cfg.method.value}")
    return FLAT_METHODS[cfg.method](cfg)


# averaged over micro-batches (MeanMetric); the per-step quantities are logged directly
_MICRO_METRICS = (
    "loss",
    "harmful_loss",
    "perturbed_harmful_loss",
    "refusal_loss",
    "harmful_loss_change",
    "grad_norm_h",
    "grad_norm_h_prime",
    "grad_norm_r",
    "cos_h_hprime",
)


def _cos_t(a: list[Tensor], b: list[Tensor], norm_a: Tensor, norm_b: Tensor) -> Tensor:
    """cos of two tensor lists as a tensor (no device sync inside the micro-batch)."""
    dot = torch.stack([(x.float() * y.float()).sum() for x, y in zip(a, b, strict=True)]).sum()
    return dot / (norm_a * norm_b).clamp_min(1e-20)


class FlatAlignModule(StageModule):
    """Alignment stage: g = g_a + lambda_t (g_h - g_h') + lambda2 g_r (see module doc).

    ``item`` = {"align": batch, "harmful": batch, "position": int}; the harmful batch's
    ``refusal_*`` view is the refusal y_r of the term g_r.
    """

    log_prefix = "align"

    def __init__(self, model: nn.Module, align: AlignStageConfig):
        super().__init__(model, align, _MICRO_METRICS)
        self.settings = resolve_align_settings(align)
        if not self.settings.flat:
            # declared to the DataModule: SFT never reads D_harm, so it is not even collated
            self.stream_plan = LockstepPlan((TrainStream.ALIGN,))
        self.lambda_state = LambdaState()
        self._snapshot = ParameterSnapshot()
        # window sums of g_h, g_s = g_h - g_h' and g_r, each divided by N (float32)
        self._sum_h: list[Tensor] = []
        self._sum_s: list[Tensor] = []
        self._sum_r: list[Tensor] = []
        self._overshoot_warned = False
        # (overshot?, harmful loss, perturbed harmful loss) of the window's first overshooting micro-batch
        self._overshoot: tuple[Tensor, Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ micro-batch
    def _accumulate_micro_batch(self, item: Mapping[str, Any]) -> None:
        params = self.trainable()
        if self.settings.flat:
            self._flat_terms(item["harmful"], params)
        loss_a = token_mean_nll(self.model, item["align"])
        self.manual_backward(loss_a / self.accumulate)
        self._track("loss", loss_a)

    def _flat_terms(self, harm: Mapping[str, Tensor], params: list[nn.Parameter]) -> None:
        s = self.settings
        loss_h = token_mean_nll(self.model, harm)
        g_h = grads_of(loss_h, params)
        norm_h = global_norm(g_h)
        self._snapshot.save(params)
        try:
            descend_(params, g_h, s.rho, norm_h)
            loss_hp = token_mean_nll(self.model, harm)
            g_hp = grads_of(loss_hp, params)
            loss_r, g_r = None, None
            if s.lambda2 > 0:
                loss_r = token_mean_nll(self.model, harm, prefix="refusal_")
                g_r = grads_of(loss_r, params)
            elif self.stage_cfg.log_refusal_loss:
                # opt-in: Booster's update does not use g_r, so by default it costs its true
                # 3 passes; this no-grad forward is for the log only
                with torch.no_grad():
                    loss_r = token_mean_nll(self.model, harm, prefix="refusal_")
        finally:
            self._snapshot.restore(params)

        self._add_to_window(g_h, g_hp, g_r)
        norm_hp = global_norm(g_hp)
        self._track("harmful_loss", loss_h)
        self._track("perturbed_harmful_loss", loss_hp)
        if loss_r is not None:
            self._track("refusal_loss", loss_r)
        self._track("harmful_loss_change", loss_hp.detach() - loss_h.detach())
        self._note_overshoot(loss_h.detach(), loss_hp.detach())
        self._track("grad_norm_h", norm_h)
        self._track("grad_norm_h_prime", norm_hp)
        self._track("cos_h_hprime", _cos_t(g_h, g_hp, norm_h, norm_hp))
        if g_r is not None:
            self._track("grad_norm_r", global_norm(g_r))

    # A normalised descent step of radius rho that RAISES the harmful loss by more than this
    # factor has left the region where the one-step approximation of the inner min holds.
    OVERSHOOT_FACTOR = 2.0

    def _note_overshoot(self, loss_h: Tensor, loss_hp: Tensor) -> None:
        """Keep the micro-batch's two harmful losses when the perturbation overshot, as
        tensors: read on the host once per optimiser step (`_warn_on_overshoot`), not once
        per micro-batch, so that an accelerator is not synchronised inside the window."""
        if self._overshoot_warned:
            return
        over = loss_hp > self.OVERSHOOT_FACTOR * loss_h.clamp_min(1e-8)
        if self._overshoot is None:
            self._overshoot = (over, loss_h, loss_hp)
        else:  # the first overshooting micro-batch of the window is the one reported
            seen, h, hp = self._overshoot
            take = over & ~seen
            self._overshoot = (seen | over, torch.where(take, loss_h, h), torch.where(take, loss_hp, hp))

    def _warn_on_overshoot(self) -> None:
        """Say once when the perturbation overshoots (measured on the embedded demo with
        rho = 0.3 on an r16/alpha32 LoRA: the perturbed harmful loss rose from 0.62 at step
        44 to 24.1 at step 59 while lambda_t * ||g_s|| swamped the alignment gradient;
        docs/calibration.md ("Perturbation radius rho"))."""
        pending, self._overshoot = self._overshoot, None
        if self._overshoot_warned or pending is None or not bool(pending[0]):
            return
        self._overshoot_warned = True
        loss_h, loss_hp = float(pending[1]), float(pending[2])
        rank_zero_warn(
            f"flat alignment: the perturbation step of radius method.align.rho={self.settings.rho} raised "
            f"the harmful loss from {loss_h:.3g} to {loss_hp:.3g} (step {self.global_step}); the one-step "
            "approximation of the inner min no longer holds and the flatness gradient can swamp the "
            "alignment gradient. Consider a smaller rho (the effective radius grows with lora.alpha/r)."
        )

    def _add_to_window(self, g_h: list[Tensor], g_hp: list[Tensor], g_r: list[Tensor] | None) -> None:
        if not self._sum_s:
            self._sum_h = [torch.zeros_like(g, dtype=torch.float32) for g in g_h]
            self._sum_s = [torch.zeros_like(g, dtype=torch.float32) for g in g_h]
            self._sum_r = [torch.zeros_like(g, dtype=torch.float32) for g in g_h]
        inv_n = 1.0 / self.accumulate
        with torch.no_grad():
            for i, (gh, ghp) in enumerate(zip(g_h, g_hp, strict=True)):
                self._sum_h[i].add_(gh.float(), alpha=inv_n)
                self._sum_s[i].add_(gh.float() - ghp.float(), alpha=inv_n)
                if g_r is not None:
                    self._sum_r[i].add_(g_r[i].float(), alpha=inv_n)

    # ------------------------------------------------------------------ window boundary
    def _window_tensors(self) -> list[Tensor]:
        return [*self._sum_h, *self._sum_s, *self._sum_r]

    def _reset_window(self) -> None:
        for t in self._window_tensors():
            t.zero_()
        self._overshoot = None  # a skipped window's overshoot is not reported as the next one's

    def _load_window_tensors(self, tensors: list[Tensor]) -> None:
        if not tensors:
            return
        params = self.trainable()
        n = len(params)
        if len(tensors) != 3 * n:
            raise RuntimeError(f"checkpoint window holds {len(tensors)} tensors; expected {3 * n}")
        moved = [t.to(device=params[i % n].device, dtype=torch.float32) for i, t in enumerate(tensors)]
        self._sum_h, self._sum_s, self._sum_r = moved[:n], moved[n : 2 * n], moved[2 * n :]

    def _combine_gradients(self, params: list[nn.Parameter]) -> dict[str, float]:
        g_a = current_grads(params)
        a = flatten(g_a)
        logs = {"grad_norm_a": float(a.norm())}
        s = self.settings
        if not s.flat:
            logs["lambda_t"] = 0.0
            return logs
        self._warn_on_overshoot()
        # one all-reduce of the flattened window sums (one collective, not two per tensor)
        reduced = unflatten_like(self.trainer.strategy.reduce(flatten(self._sum_s + self._sum_r), reduce_op="mean"),
                                 self._sum_s + self._sum_r)
        n = len(self._sum_s)
        self._sum_s, self._sum_r = reduced[:n], reduced[n:]
        g_s, g_h = flatten(self._sum_s), flatten(self._sum_h)
        lam = compute_lambda(s.lambda_mode, a, g_s, s.lambda_params, self.lambda_state)
        with torch.no_grad():
            for p, ga, gs, gr in zip(params, g_a, self._sum_s, self._sum_r, strict=True):
                update = gs * lam + gr * s.lambda2
                p.grad = ga + update.to(ga.dtype) if p.grad is None else p.grad.add_(update.to(p.grad.dtype))
        logs.update(
            lambda_t=lam,
            grad_norm_s=float(g_s.norm()),
            cos_a_s=cosine(a, g_s),
            cos_a_h=cosine(a, g_h),
        )
        if s.lambda2 > 0:
            logs["cos_a_r"] = cosine(a, flatten(self._sum_r))
        return logs

    # ------------------------------------------------------------------ checkpoints
    def _extra_state(self) -> dict:
        return {"lambda_state": self.lambda_state.state_dict()}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.lambda_state.load_state_dict(state["lambda_state"])
