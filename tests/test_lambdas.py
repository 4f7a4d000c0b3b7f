"""lambda_t rules against hand-computed values on small fixed vectors."""

from __future__ import annotations

import math

import pytest
import torch

from antibody.config.schema import LambdaMode
from antibody.methods.lambdas import (
    LAMBDA_RULES,
    LambdaParams,
    LambdaState,
    compute_lambda,
    cosine,
    cosine_raw_lambda,
    kkt_lambda,
)

# g_a = (1, 2, 0), g_s = (2, 0, 1): <g_s, g_a> = 2, ||g_s||^2 = 5, ||g_a|| = sqrt 5
G_A = torch.tensor([1.0, 2.0, 0.0])
G_S = torch.tensor([2.0, 0.0, 1.0])


def test_registry_covers_every_mode():
    assert set(LAMBDA_RULES) == set(LambdaMode)


def test_kkt_hand_values():
    # (xi * 5 - 2) / 5
    assert kkt_lambda(G_A, G_S, xi=5.0) == pytest.approx(23 / 5)
    assert kkt_lambda(G_A, G_S, xi=1.0) == pytest.approx(3 / 5)
    # xi small and g_a aligned with g_s: (0.1*5 - 2)/5 < 0 -> clamped at 0
    assert kkt_lambda(G_A, G_S, xi=0.1) == 0.0
    # g_a opposite to g_s raises lambda: <g_s, -2 g_s> = -10 -> (25 + 10) / 5
    assert kkt_lambda(-2 * G_S, G_S, xi=5.0) == pytest.approx((25 + 10) / 5)


def test_kkt_decreases_sharpness_by_a_t():
    # Theorem 4.1's constraint holds with equality when lambda > 0: <g_s, g_a + lam g_s> = xi ||g_s||^2
    gen = torch.Generator().manual_seed(0)
    g_a, g_s = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    lam = kkt_lambda(g_a, g_s, xi=5.0)
    a, s = g_a.double().numpy(), g_s.double().numpy()
    want = (5.0 * s @ s - s @ a) / (s @ s)  # numpy, in float64
    assert want > 0 and lam == pytest.approx(want, rel=1e-5)  # the unclamped branch
    assert float(g_s.dot(g_a + lam * g_s)) == pytest.approx(5.0 * float(g_s.dot(g_s)), rel=1e-5)


def test_zero_sharpness_direction_gives_zero():
    assert kkt_lambda(G_A, torch.zeros(3), xi=5.0) == 0.0
    assert cosine(G_A, torch.zeros(3)) == 0.0
    assert cosine_raw_lambda(G_A, torch.zeros(3), eta=5.0) == 5.0


def test_cosine_raw_hand_values():
    cos = 2 / (math.sqrt(5) * math.sqrt(5))  # 0.4
    assert cosine(G_A, G_S) == pytest.approx(0.4)
    assert cosine_raw_lambda(G_A, G_S, eta=5.0) == pytest.approx(5 - cos)
    # clamp at 0: eta below the cosine
    assert cosine_raw_lambda(G_A, G_S, eta=0.2) == 0.0
    assert cosine_raw_lambda(-G_A, G_S, eta=0.2) == pytest.approx(0.6)


def test_cosine_ema_over_several_steps():
    params = LambdaParams(eta=5.0, momentum=0.9)
    state = LambdaState()
    pairs = [(G_A, G_S), (-G_A, G_S), (G_S, G_S), (G_A, -G_S)]
    raws = [4.6, 5.4, 4.0, 5.4]  # eta - cos with cos = 0.4, -0.4, 1, -0.4
    expected, ema = [], None
    for raw in raws:
        ema = raw if ema is None else 0.9 * ema + 0.1 * raw
        expected.append(ema)
    got = [compute_lambda(LambdaMode.COSINE_EMA, a, s, params, state) for a, s in pairs]
    assert got == pytest.approx(expected)
    assert state.updates == 4
    # the state round-trips through a checkpoint dict and continues identically
    restored = LambdaState()
    restored.load_state_dict(state.state_dict())
    nxt = compute_lambda(LambdaMode.COSINE_EMA, G_A, G_S, params, restored)
    assert nxt == pytest.approx(0.9 * expected[-1] + 0.1 * 4.6)


def test_constant_and_dispatch():
    params = LambdaParams(lam=3.0, xi=2.0)
    state = LambdaState()
    assert compute_lambda(LambdaMode.CONSTANT, G_A, G_S, params, state) == 3.0
    assert compute_lambda(LambdaMode.KKT, G_A, G_S, params, state) == pytest.approx((2 * 5 - 2) / 5)
    assert state.ema is None  # only cosine_ema touches the state
