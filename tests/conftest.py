"""Shared fixtures. Tests never touch the hub or W&B's servers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# trainer.precision=auto (the demo's) resolves as on a CPU without native bf16, on every
# machine: the suite's pinned keys and fp32 outputs do not depend on where it runs
# (tests/test_precision_auto.py sets it either way)
os.environ["ANTIBODY_NATIVE_BF16"] = "0"

import ipaddress  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two
# threads made each tiny forward/backward ~100x slower (thread contention).
torch.set_num_threads(1)

from antibody.config import compose  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

# CUDA tests carry `gpu` (deselected by default; `pytest -m gpu` runs them) and are skipped
# where no CUDA device exists. Decorate a test with `@requires_cuda`, or give a parameter
# `pytest.param(..., marks=CUDA_MARKS)`.
CUDA_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def requires_cuda(test):
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


class NetworkBlocked(OSError):
    """A test tried to reach a host off this machine."""


def _loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths: a local file
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it would already be network access
        return False


_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _guarded(real):
    def connect(self, address):
        if not _loopback(address):
            raise NetworkBlocked(f"tests may not reach the network (connect to {address!r}); the hub and "
                                 "W&B are unreachable here: use the fixtures and offline modes")
        return real(self, address)

    return connect


def pytest_sessionstart(session):
    """Block every socket connection off this machine for the whole session, whatever the
    environment says (HF_HUB_OFFLINE=0 in the shell still cannot reach the hub). Loopback
    stays open: DDP's gloo rendezvous and Jupyter kernels (the notebook tests) use it."""
    socket.socket.connect = _guarded(_real_connect)
    socket.socket.connect_ex = _guarded(_real_connect_ex)


def pytest_collection_modifyitems(config, items):
    """A `gpu` test never runs, and so never fails, without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def tiny_cfg(tmp_path):
    """The real config shrunk to the tiny model and a few rows, writing under tmp_path."""
    return compose(["experiment=tiny", f"run.output_dir={tmp_path / 'runs'}"])


@pytest.fixture(scope="module")
def tokenizer():
    """SmolLM2's tokenizer, as the tiny experiment loads it (evaluation tests)."""
    from antibody.models import load_tokenizer

    return load_tokenizer(compose(["experiment=tiny"]).model)


@pytest.fixture(scope="module")
def model(tokenizer):
    """The tiny random model in eval mode (evaluation tests)."""
    from antibody.models.tiny import build_tiny_model

    return build_tiny_model(compose(["experiment=tiny"]).model.tiny, tokenizer).eval()


@pytest.fixture
def fake(monkeypatch):
    """The split builder reads FakeSources (tests/helpers.py) instead of the packages."""
    from antibody.data import builder as builder_module
    from tests.helpers import FakeSources

    src = FakeSources()
    monkeypatch.setattr(builder_module, "load_source", src.load_source)
    monkeypatch.setattr(builder_module, "source_prompts", src.source_prompts)
    monkeypatch.setattr(builder_module, "alignment_refusals", src.alignment_refusals)
    return src
