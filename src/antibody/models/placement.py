"""Where a model is placed: this rank's GPU for a quantised model (created in place), the
accelerator ``trainer.accelerator`` names for work outside Lightning (evaluation, the screen,
merge-check, the base model writing data), and the CPU otherwise (Lightning moves a model
it trains)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

import torch

from antibody.config.errors import ConfigError
from antibody.models.errors import ModelError

# Where a launcher writes a process's rank on its node: torchrun and Lightning's own DDP
# launcher set LOCAL_RANK in every process they start (Lightning's LightningEnvironment /
# TorchElasticEnvironment read it); under SLURM, Lightning's SLURMEnvironment reads
# SLURM_LOCALID. Read in this order; absent everywhere: a single process (rank 0).
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")


def local_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank on its node, from the launcher's environment (0 when none is set)."""
    env = os.environ if env is None else env
    for var in LOCAL_RANK_VARS:
        value = env.get(var, "").strip()
        if value:
            if not value.isdigit():
                raise ModelError(f"{var}={value!r} is not a local rank (a non-negative integer)")
            return int(value)
    return 0


def quantized_device(cuda_devices: int, env: Mapping[str, str] | None = None) -> torch.device:
    """The device a quantised model is created on when the caller names none.

    A 4-bit model cannot be moved after loading, so it must be created where its DDP rank
    trains: Lightning's DDP puts local rank k on ``cuda:k`` (its parallel devices are
    cuda:0..n-1 and ``root_device`` is ``parallel_devices[local_rank]``). Loading on
    cuda:0 in every rank would stack all replicas on the first GPU. ``cuda_devices`` is
    ``torch.cuda.device_count()`` (0: the CPU, where bitsandbytes 0.50 also runs 4-bit).
    """
    if cuda_devices == 0:
        return torch.device("cpu")
    rank = local_rank(env)
    if rank >= cuda_devices:
        raise ModelError(
            f"local rank {rank} (from {'/'.join(LOCAL_RANK_VARS)}) has no GPU: this process sees "
            f"{cuda_devices} CUDA device(s); set trainer.devices to at most the GPUs per node"
        )
    return torch.device("cuda", rank)


def resolve_device(device: str | torch.device | None, quantized: bool) -> Optional[torch.device]:
    if device is not None:
        return torch.device(device)
    if quantized:  # must be placed at load time, on this rank's own GPU
        return quantized_device(torch.cuda.device_count() if torch.cuda.is_available() else 0)
    return None  # leave on CPU: Lightning moves it (to this rank's device under DDP)


def inference_device(accelerator: str) -> torch.device:
    """The device a model runs on outside Lightning (evaluation, the screen, merge-check, the
    base model writing data): what ``trainer.accelerator`` names, so that a GPU run does not
    generate and judge on the CPU of its GPU machine. One process, one device: the first
    visible GPU (``CUDA_VISIBLE_DEVICES`` picks it)."""
    name = str(accelerator).lower()
    if name == "cpu":
        return torch.device("cpu")
    if name in ("gpu", "cuda", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if name == "auto":
            return torch.device("cpu")
        raise ConfigError(f"trainer.accelerator={accelerator} asks for a GPU, but this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); use trainer=cpu, or install the CUDA build of torch "
                          "(docs/gpu.md)")
    raise ConfigError(f"trainer.accelerator={accelerator}: evaluation and the screen run on cpu or cuda only; "
                      "choose trainer.accelerator=cpu, gpu or auto")
