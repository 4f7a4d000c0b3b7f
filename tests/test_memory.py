"""Memory across the jobs of one process (a study, the demo): what a finished job loaded is
gone before the next starts, and the process does not grow job after job.

The jobs run in a fresh Python process, as a study's do: pytest's own log and warning
capture keeps references to what a job logged and warned about, which no study has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# the process may hold this much more after its third tiny job than after its first
# (allocator noise: the tiny model's weights are ~1 MiB; a leaked job would keep its model,
# optimiser and data)
RSS_BOUND_MIB = 64

SCRIPT = """
import gc, json, sys
import lightning as L, torch
from antibody.app.memory import release_memory, resident_mib
from antibody.app.stages import train_stage
from antibody.config import compose
from antibody.config.schema import Stage

def alive():
    gc.collect()
    objects = gc.get_objects()
    return [sum(isinstance(o, L.LightningModule) for o in objects), sum(isinstance(o, L.Trainer) for o in objects),
            sum(isinstance(o, torch.nn.Parameter) for o in objects)]

base = ["experiment=tiny", "run.output_dir=" + sys.argv[1], "method=sft"]
jobs = [(Stage.ALIGN, ["run.name=a1"]), (Stage.ALIGN, ["run.name=a2", "run.seed=2"]),
        (Stage.FINETUNE, ["run.name=f1", "run.init_from=a1"])]
out = {"before": alive(), "after": [], "rss": []}
for stage, over in jobs:
    train_stage(compose([*base, *over]), stage)
    release_memory()
    out["after"].append(alive())
    out["rss"].append(resident_mib())
print("RESULT " + json.dumps(out))
"""


def test_three_jobs_in_one_process_leave_nothing_behind(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # no LightningModule, Trainer or parameter of a finished job is still alive
    assert out["after"] == [out["before"]] * 3 and out["before"] == [0, 0, 0]
    rss = out["rss"]
    assert 0 < rss[0] and rss[2] - rss[0] <= RSS_BOUND_MIB, f"resident MiB after each job: {rss}"


def test_the_study_evicts_its_evaluation_tools_only():
    from antibody.app.study.run import evict_tools

    cache = {("tools", "a"): object(), ("tools", "b"): object(), ("records", "m", "x"): [1]}
    evict_tools(cache)
    assert list(cache) == [("records", "m", "x")]
