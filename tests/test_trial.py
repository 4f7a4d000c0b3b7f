"""Sweep trials: every sweep file composes, trials never collide, a trial logs its summary."""

from __future__ import annotations

import itertools
import json

import pytest
import yaml

from antibody.app.study.trial import trial_cell
from antibody.cli.main import main
from antibody.config import compose
from antibody.config.compose import default_conf_dir

SWEEPS = sorted((default_conf_dir() / "sweep").glob("*.yaml"))
# what a trial reports (trial_summary.json, W&B summary): the only metrics a sweep may optimise
SUMMARY_METRICS = {"harmful/harmful_score", "harmful/harmful_score_corrected", "harmful/harmful_score_plus",
                   "harmful/refusal_rate", "benign/over_refusal"}


def _agent_args(sweep: dict) -> list[list[str]]:
    """The key=value lists a grid agent passes (`${args_no_hyphens}`), one per trial."""
    params = sweep["parameters"]
    keys = list(params)
    grids = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
    return [[f"{k}={v}" for k, v in zip(keys, combo, strict=True)] for combo in itertools.product(*grids)]


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_runs_trials_on_a_reported_metric_and_composes(path, tmp_path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"][-2:] == ["trial", "${args_no_hyphens}"]
    metric = sweep["metric"]["name"]
    assert metric in SUMMARY_METRICS or metric.endswith("/accuracy"), metric
    dirs = set()
    # the paper sweeps name their experiment; the others run here on the tiny one
    base = [] if "experiment" in sweep["parameters"] else ["experiment=tiny"]
    for args in _agent_args(sweep):
        cfg = compose([*base, f"run.output_dir={tmp_path}", *args])  # validates every value
        assert cfg.logger.kind.value == "wandb"
        cell, _ = trial_cell([*base, f"run.output_dir={tmp_path}", *args])
        dirs.add(cell.model_job.name)  # the repaired model's when the trial repairs
    assert len(dirs) == len(_agent_args(sweep))  # every trial of the grid has its own run dir


def test_trials_share_alignments_but_never_run_dirs(tmp_path):
    base = ["experiment=tiny", f"run.output_dir={tmp_path}"]
    a, _ = trial_cell([*base, "data.user.p=0.1"])
    b, _ = trial_cell([*base, "data.user.p=0.2"])
    c, _ = trial_cell([*base, "data.user.p=0.1"])
    d, _ = trial_cell([*base, "data.user.p=0.1", "method.align.rho=0.3"])
    assert a.finetune.name != b.finetune.name and a.align.name == b.align.name  # p is not read by alignment
    assert a.finetune.name == c.finetune.name  # the same trial again finds its own run dir
    assert d.align.name != a.align.name


def test_a_trial_writes_its_summary_and_logs_it_to_wandb(tmp_path, monkeypatch):
    """The summary (trial_summary.json) holds every metric the sweeps may optimise; with
    logger=wandb the same dict goes to the W&B run's summary (a recording stand-in here),
    with the predictions as a table; then a real offline W&B run writes those keys."""
    logged = {}

    class FakeRun:
        def __init__(self, **kwargs):
            logged["init"] = kwargs
            self.summary = {}

        def log(self, data):
            logged["log"] = data

        def finish(self):
            logged["summary"] = dict(self.summary)

    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kw: FakeRun(**kw))
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["experiment=tiny", f"run.output_dir={tmp_path}", "logger=wandb", "data.user.p=0.25",
            "method.align.max_steps=1", "method.finetune.max_steps=1", "method.finetune.weighting=likelihood_ratio"]
    assert main(["trial", *args]) == 0
    cell, root = trial_cell(args)
    saved = json.loads((root / cell.finetune.name / "trial_summary.json").read_text())
    summary = saved["summary"]
    assert SUMMARY_METRICS <= set(summary) and "arithmetic/accuracy" in summary
    assert {"detector/auroc_neg_ratio", "weights/harmful_x_batch"} <= set(summary)
    metrics = json.loads((root / cell.finetune.name / "eval" / "metrics.json").read_text())["metrics"]
    assert summary["harmful/harmful_score"] == metrics["harmful/harmful_score"]["value"]
    assert logged["summary"] == summary and logged["init"]["mode"] == "offline"
    table = logged["log"]["predictions/harmful"]
    assert len(table.data) == metrics["harmful/harmful_score"]["n"]

    # the real W&B client, offline, with the trial's own summary (nothing stubbed): the run
    # file's summary records, decoded, hold every value of trial_summary.json, and the run
    # file is complete (its exit record written) when the trial returns
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["trial", *args]) == 0  # everything cached: aligns and fine-tunes nothing
    (run_file,) = (root / cell.finetune.name / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    assert records[-1].WhichOneof("record_type") == "exit"
    in_file = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                in_file[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    for key, value in summary.items():
        assert in_file.get(key) == pytest.approx(value), key
    assert in_file["predictions/harmful/nrows"] == metrics["harmful/harmful_score"]["n"]


def _wandb_records(path) -> list:
    """The records of an offline W&B run file, decoded with W&B's own protobuf: a 7-byte
    header (":W&B", magic 0xBEE1, version 0), then LevelDB-log-style chunks (crc32, length,
    type; FULL = 1, or FIRST = 2 / MIDDLE = 3 / LAST = 4 pieces) in 32 KiB blocks whose
    tails shorter than a chunk header are padding."""
    import struct

    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:7] == b":W&B\xe1\xbe\x00"
    records, pos, pieces = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(pieces))
            pieces = b""
    return records
