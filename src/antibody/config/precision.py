"""``trainer.precision=auto``: bf16-mixed where the hardware runs bf16 natively, 32-true
otherwise, resolved once at compose so that the saved config, the study keys and every
reading name the precision the run actually used, never "auto".

On a CPU, "auto" resolving to bf16-mixed also trains with eager attention
(``trainer.attention=eager``, unless the config names one): PyTorch's CPU flash attention
in bf16 took 18% of a fine-tuning step's CPU time for about 5% of its FLOPs, and in one bench
run bf16-mixed with eager attention took 0.50-0.61x the fp32 step against 0.61-0.72x for
bf16-mixed alone (docs/calibration.md, "bf16 on the CPU"). Generation keeps the model's
kernel (sdpa), which was the faster one there. fp32 runs are untouched: eager attention
gained nothing in fp32 (0.998x).

Why not bf16 everywhere on the CPU: the measured gain (docs/calibration.md, "bf16 on the
CPU": a step in 0.68-0.77 of the fp32 time, results within their 3-seed intervals) comes from
the cores' AVX512-BF16 instructions. A CPU without them (most laptops, Apple silicon) would
run bf16 through emulation, which nobody measured, so it keeps fp32. On a GPU "auto" is
bf16-mixed, what trainer=gpu sets: every accelerator the GPU configs name (A100, H100, L40S)
has bf16.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
from pathlib import Path
from typing import Optional

from antibody.config.errors import ConfigError
from antibody.config.schema import Config

AUTO = "auto"
BF16_MIXED = "bf16-mixed"
FULL = "32-true"
EAGER = "eager"
# the CPU flags (Linux /proc/cpuinfo names) of native bf16 arithmetic: AVX512-BF16
# (Cooper Lake, Sapphire Rapids, Zen 4 and later) or AMX's bf16 tiles
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_ENV = "ANTIBODY_NATIVE_BF16"


def _cpuinfo_flags(path: Path = _CPUINFO) -> Optional[frozenset[str]]:
    """The first CPU's flags from /proc/cpuinfo, or None where there is no such file (not Linux)."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_cpu_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively; ``ANTIBODY_NATIVE_BF16=0`` or ``1``
    says so instead (to compose another machine's jobs, and to pin the test suite's keys)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"{NATIVE_BF16_ENV}={forced!r}: use 0 or 1, or leave it unset to ask the CPU")
        return forced == "1"
    return _detected_native_bf16()


@functools.lru_cache(maxsize=1)
def _detected_native_bf16() -> bool:
    """Read from /proc/cpuinfo where it exists (no torch import: a study's dry run composes
    every job in seconds); elsewhere asked of torch on x86, and False on other architectures
    (not measured)."""
    flags = _cpuinfo_flags()
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def auto_precision(accelerator: str) -> str:
    """The precision "auto" stands for on ``accelerator``."""
    if accelerator == "cpu":
        return BF16_MIXED if native_cpu_bf16() else FULL
    if accelerator in ("gpu", "cuda"):
        return BF16_MIXED
    # "auto" would need the device to be probed at compose (a study composes on a login node)
    raise ConfigError(
        f"trainer.precision=auto needs trainer.accelerator cpu, gpu or cuda (got {accelerator!r}); "
        "name the precision instead (32-true or bf16-mixed)"
    )


def resolve_precision(cfg: Config) -> Config:
    """``cfg`` with ``trainer.precision=auto`` replaced by what it stands for here (and, for
    bf16-mixed on a CPU, eager attention in training unless ``trainer.attention`` is set)."""
    t = cfg.trainer
    if t.precision != AUTO:
        return cfg
    precision = auto_precision(t.accelerator)
    attention = t.attention
    if attention is None and precision == BF16_MIXED and t.accelerator == "cpu":
        attention = EAGER
    return dataclasses.replace(cfg, trainer=dataclasses.replace(t, precision=precision, attention=attention))
