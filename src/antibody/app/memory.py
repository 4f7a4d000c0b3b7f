"""Memory between the jobs of one process (a study, the demo): what a finished job freed is
returned before the next one loads.

A job's model, trainer and data go out of scope when it returns (tests/test_memory.py
counts them), but the memory they held stays with the allocators: CUDA's caching allocator
keeps its blocks for reuse, and glibc keeps freed heap pages, so the process looks as
large as its largest job so far. On a GPU a judge kept for the next evaluation also sits
beside every training job; the study driver evicts it on accelerators (app/study/run.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os

import torch


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def release_memory() -> None:
    """Collect Python's cycles, give the CUDA caching allocator's unused blocks back, and
    (glibc) return free heap pages to the system, so that the next job starts from what is
    live and the process's resident size says so."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only (not musl, not macOS)
        libc.malloc_trim(0)


def resident_mib() -> float:
    """This process's resident set size now, in MiB (Linux; 0.0 where /proc is absent)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0
