"""Peak memory of one method's training, isolated from every other method's.

Why a fresh process per method on the CPU: the peak resident set size (RSS) of a process
only grows (``ru_maxrss``), and memory a method freed stays resident in the allocator's
free lists, where the next method in the same process reuses it without the RSS rising.
So the bench's memory pass runs each method once in a new interpreter
(``python -m antibody.app.bench.run <request.json>``) that loads the same config, data and
fresh LoRA as the timing rounds and trains the same warm-up + timed steps on the same
batches. There, just before ``trainer.fit``, the kernel's high-water mark of the RSS
(VmHWM) is reset (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), so the peak read
after the fit is the fit's own, not that of model loading or of the imports:

- ``peak_mib``: the process's peak RSS during the fit (runtime, data, weights, training),
  what a user of the method must have;
- ``over_load_mib``: that peak minus the RSS just before the fit (the model and data
  loaded): what the method's training adds (activations, gradients, optimiser state,
  perturbation snapshots), where methods differ.

On CUDA the caching allocator's own counters are exact per fit
(``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated``), the same two
figures are read from them, and the weights are moved to the device before the baseline
so that it holds them as the CPU baseline does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

MIB = 1024 * 1024
CHILD_MODULE = "antibody.app.bench.run"  # its __main__ runs one memory pass (bench.memory_child)


class MemoryPassError(RuntimeError):
    """A memory child failed; the bench records it and keeps its timings."""


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` field, in KiB (the kernel writes e.g. ``VmHWM:  812 kB``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_rss_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel offers no such reset (not
    Linux, or a /proc without clear_refs), and then no peak is reported rather than one
    that includes the loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device: torch.device, module: torch.nn.Module) -> Iterator[dict]:
    """Around a fit: yields a dict that holds, once the block ends, ``kind``,
    ``before_fit_mib``, ``peak_mib`` and ``over_load_mib`` (None where unavailable)."""
    reading: dict = {}
    if device.type == "cuda":
        module.to(device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / MIB
        yield reading
        peak = torch.cuda.max_memory_allocated(device) / MIB
        kind = "cuda_max_allocated"
    else:
        ok = _reset_rss_peak()
        before = _status_kib("VmRSS") / 1024
        yield reading
        peak = _status_kib("VmHWM") / 1024 if ok else None
        kind = "cpu_rss"
    reading.update(kind=kind, before_fit_mib=before, peak_mib=peak,
                   over_load_mib=None if peak is None else peak - before)


def measure_in_subprocess(request: dict) -> dict:
    """Run one memory pass in a fresh interpreter and return what it measured.

    ``request`` holds what the child needs to rebuild the variant (the overrides, stage,
    method, steps, warmup); the child's output is shown only if it fails."""
    with tempfile.TemporaryDirectory(prefix="antibody-bench-") as tmp:
        req, out = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({**request, "out": str(out)}))
        proc = subprocess.run([sys.executable, "-m", CHILD_MODULE, str(req)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise MemoryPassError(f"bench memory pass of {request['stage']} {request['method']} "
                               f"failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())
