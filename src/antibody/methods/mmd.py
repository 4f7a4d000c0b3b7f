"""Multi-kernel Gaussian MMD between two equally sized samples (RepNoise's noise term).

The estimator is the one of the released RepNoise loss (``representation_noising/loss.py``,
``MMD_loss`` with ``kernel_num=5, kernel_mul=2.0``); docs/method.md ("RepNoise"):

- the two samples x, y (each [B, F]) are stacked into n = 2B points and d_ij is the squared
  L2 distance between points i and j;
- bandwidth = sum_ij d_ij / (n^2 - n) (the mean off-diagonal distance, detached), divided by
  kernel_mul ** (kernel_num // 2) so that the kernel widths are spread around that mean;
- k_ij = sum_{i'=0}^{kernel_num-1} exp(-d_ij / (bandwidth * kernel_mul^i'));
- MMD = mean over the B x B blocks of (K_xx + K_yy - K_xy - K_yx), the biased estimator
  (diagonal terms included), so MMD(x, x) = 0 (up to rounding).
"""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_squared_distances(points: Tensor) -> Tensor:
    """[n, n] squared L2 distances between the rows of ``points`` ([n, F]).

    The released code materialises the [n, n, F] differences; at paper scale (n = 32 rows of
    256 tokens x 4096 features) that is 4 GiB per layer, so the Gram form
    |a|^2 + |b|^2 - 2 a.b is used instead. Subtracting the (detached) column mean first
    changes no distance but removes the common offset whose cancellation would otherwise
    cost float32 precision; the clamp and the exact zero diagonal absorb what rounding is left.
    """
    centred = points - points.detach().mean(dim=0, keepdim=True)
    sq = centred.pow(2).sum(dim=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (centred @ centred.T)
    eye = torch.eye(points.shape[0], dtype=torch.bool, device=points.device)
    return torch.where(eye, torch.zeros_like(dist), dist.clamp_min(0.0))


def multi_kernel_mmd(x: Tensor, y: Tensor, kernel_num: int = 5, kernel_mul: float = 2.0) -> Tensor:
    """Biased multi-kernel MMD^2 estimate between samples ``x`` and ``y`` (both [B, F]).

    Computed in at least float32 whatever the input dtype (bf16 hidden states would lose the
    small distance differences the kernels compare), also under autocast: CUDA's bf16 and
    the CPU's bf16-mixed would otherwise run the Gram product in bf16 (autocast is switched
    off inside). Returns a 0-dim tensor.
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(
            f"multi_kernel_mmd needs two [B, F] tensors of one shape; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if kernel_num < 1 or kernel_mul <= 0:
        raise ValueError(f"kernel_num must be >= 1 and kernel_mul > 0; got {kernel_num}, {kernel_mul}")
    with torch.autocast(x.device.type, enabled=False):
        return _mmd(x, y, kernel_num, kernel_mul)


def _mmd(x: Tensor, y: Tensor, kernel_num: int, kernel_mul: float) -> Tensor:
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    points = torch.cat([x, y]).to(dtype)
    n, b = points.shape[0], x.shape[0]
    dist = pairwise_squared_distances(points)
    # released: the bandwidth is a statistic of the data, not a path for gradients
    bandwidth = dist.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    # ours: all points equal (e.g. a batch with no answer token, fully masked) gives a zero
    # bandwidth and 0/0 in the released code; a tiny floor makes every kernel 1 and MMD 0
    bandwidth = bandwidth.clamp_min(torch.finfo(dtype).tiny)
    kernels = sum(torch.exp(-dist / (bandwidth * kernel_mul**i)) for i in range(kernel_num))
    xx, yy = kernels[:b, :b], kernels[b:, b:]
    xy, yx = kernels[:b, b:], kernels[b:, :b]
    return (xx + yy - xy - yx).mean()
