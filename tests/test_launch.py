"""Who is rank zero before any process group exists, and `eval` under a multi-process launcher.

The multi-process runs themselves are in tests/test_ddp.py (marker `ddp`).
"""

from __future__ import annotations

import pytest

from antibody.app.rundir import launch_rank, launch_world_size
from antibody.cli.main import main

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


@pytest.fixture
def env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "variables, rank",
    [
        ({}, 0),  # one process
        ({"RANK": "5", "LOCAL_RANK": "1", "SLURM_PROCID": "0"}, 5),  # torchrun: RANK is global
        # Lightning's own launcher, 4 devices per node: node 1's first process has no LOCAL_RANK
        ({"NODE_RANK": "1"}, 4),
        ({"NODE_RANK": "1", "LOCAL_RANK": "3"}, 7),
        # processes Lightning starts inside ONE slurm task all inherit SLURM_PROCID=0
        ({"LOCAL_RANK": "2", "SLURM_PROCID": "0"}, 2),
        ({"SLURM_PROCID": "6"}, 6),  # srun, one task per device
    ],
)
def test_launch_rank_reads_the_launcher(env, variables, rank):
    for name, value in variables.items():
        env.setenv(name, value)
    assert launch_rank(devices_per_node=4) == rank


def test_launch_world_size(env):
    assert launch_world_size() == 1
    env.setenv("SLURM_STEP_NUM_TASKS", "8")
    assert launch_world_size() == 8
    env.setenv("WORLD_SIZE", "2")
    assert launch_world_size() == 2


@pytest.mark.parametrize("variable", ["WORLD_SIZE", "SLURM_STEP_NUM_TASKS"])
def test_eval_refuses_several_processes(env, tmp_path, capsys, variable):
    env.setenv(variable, "2")
    # refused before any work: the run need not even exist
    assert main(["eval", f"run={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err
    assert "2 processes were launched" in err and "trainer.devices" in err and "srun --ntasks=1" in err


def test_spawning_strategies_are_refused(tiny_cfg, tmp_path):
    from antibody.app.rundir import RunDir
    from antibody.app.stages import build_trainer
    from antibody.config import ConfigError
    from antibody.config.schema import Stage

    tiny_cfg.trainer.strategy = "ddp_spawn"
    with pytest.raises(ConfigError, match="trainer.strategy='ddp_spawn' trains in spawned processes.*strategy=ddp"):
        build_trainer(tiny_cfg, RunDir(tmp_path), Stage.ALIGN, 1)


@pytest.mark.parametrize("command", [["study", "conf/study/tiny.yaml"], ["demo", "experiment=tiny"],
                                     ["trial", "experiment=tiny"]])
def test_commands_that_evaluate_refuse_several_processes(env, capsys, command):
    """study, demo and trial would run every job once per rank: refused before any work."""
    env.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"{command[0]} runs in one process" in err and "2 processes were launched" in err
    assert "one sweep agent or trial per GPU" in err
