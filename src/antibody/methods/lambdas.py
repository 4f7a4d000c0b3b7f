"""lambda_t, the weight of the sharpness direction g_s = g_h - g_h' (docs/method.md ("lambda_t")).

Pure functions on flat gradient vectors, plus the EMA state of the released code's rule.
A registry keyed by ``LambdaMode`` maps each mode to a rule with one signature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from antibody.config.schema import AlignStageConfig, LambdaMode

# ours: below this ||g_s||^2 (or norm product) the sharpness direction is numerically zero
TINY = 1e-20


def _dot(a: Tensor, b: Tensor) -> float:
    # float64 so that hand-computed reference values match to many digits
    return float(a.double().dot(b.double()))


def kkt_lambda(g_a: Tensor, g_s: Tensor, xi: float) -> float:
    """Paper, Theorem 4.1: the smallest lambda >= 0 such that g_a + lambda g_s decreases the
    sharpness at first order by a_t = xi ||g_s||^2:

        lambda_t = max(0, (xi ||g_s||^2 - <g_s, g_a>) / ||g_s||^2)

    When g_s vanishes the sharpness term contributes nothing whatever lambda is; 0 is
    returned so that the logged value is not an artefact of division by ~0.
    """
    ss = _dot(g_s, g_s)
    if ss <= TINY:
        return 0.0
    return max(0.0, (xi * ss - _dot(g_s, g_a)) / ss)


def cosine(a: Tensor, b: Tensor) -> float:
    """cos(a, b); 0 when either vector is (numerically) zero."""
    denom = math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b))
    if denom <= TINY:
        return 0.0
    return _dot(a, b) / denom


def cosine_raw_lambda(g_a: Tensor, g_s: Tensor, eta: float) -> float:
    """Released code: raw_t = max(eta - cos(g_a, g_s), 0), before the moving average."""
    return max(eta - cosine(g_a, g_s), 0.0)


@dataclass
class LambdaState:
    """Moving average of the cosine_ema rule; saved in checkpoints for exact resume."""

    ema: Optional[float] = None
    updates: int = 0

    def update(self, raw: float, momentum: float) -> float:
        """EMA with ``momentum``, initialised at the first raw value (released code)."""
        self.ema = raw if self.ema is None else momentum * self.ema + (1.0 - momentum) * raw
        self.updates += 1
        return self.ema

    def state_dict(self) -> dict:
        return {"ema": self.ema, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]
        self.updates = int(state["updates"])


@dataclass(frozen=True)
class LambdaParams:
    """The numbers a rule may read (from AlignStageConfig, or fixed by the method)."""

    lam: float = 5.0
    xi: float = 5.0
    eta: float = 5.0
    momentum: float = 0.99

    @classmethod
    def from_config(cls, cfg: AlignStageConfig) -> LambdaParams:
        return cls(lam=cfg.lam, xi=cfg.xi, eta=cfg.eta, momentum=cfg.ema_momentum)


LambdaRule = Callable[[Tensor, Tensor, LambdaParams, LambdaState], float]


def _kkt(g_a: Tensor, g_s: Tensor, p: LambdaParams, state: LambdaState) -> float:
    return kkt_lambda(g_a, g_s, p.xi)


def _cosine_ema(g_a: Tensor, g_s: Tensor, p: LambdaParams, state: LambdaState) -> float:
    return state.update(cosine_raw_lambda(g_a, g_s, p.eta), p.momentum)


def _constant(g_a: Tensor, g_s: Tensor, p: LambdaParams, state: LambdaState) -> float:
    return p.lam


LAMBDA_RULES: dict[LambdaMode, LambdaRule] = {
    LambdaMode.KKT: _kkt,
    LambdaMode.COSINE_EMA: _cosine_ema,
    LambdaMode.CONSTANT: _constant,
}


def compute_lambda(
    mode: LambdaMode, g_a: Tensor, g_s: Tensor, params: LambdaParams, state: LambdaState
) -> float:
    """lambda_t for ``mode`` from flat vectors g_a (alignment) and g_s (sharpness)."""
    return LAMBDA_RULES[mode](g_a, g_s, params, state)
