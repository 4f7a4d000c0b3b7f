"""The repair stage in studies and trials: a repair job per cell that asks for one, keyed by
its settings and the fine-tuning it repairs; the fine-tuned model shared with the cells
that do not repair; the repaired model evaluated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from antibody.app.study.plan import align_key, jobs_of, plan
from antibody.app.study.trial import trial_cell
from antibody.cli.main import main
from antibody.config import compose
from antibody.config.errors import ConfigError
from antibody.config.schema import Stage
from antibody.config.study import load_study

STEPS = ["method.align.max_steps=1", "method.finetune.max_steps=1"]


def _study(tmp_path: Path, rows: dict, seeds=(1,)) -> Path:
    doc = {"name": "r", "experiment": "tiny", "reference": "sft -> sft", "seeds": list(seeds),
           "fixed": [f"run.output_dir={tmp_path / 'runs'}", *STEPS], "rows": rows}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


SFT = {"align": ["method.align.method=sft"], "finetune": ["method.finetune.weighting=uniform"]}


def test_a_repair_row_shares_the_fine_tuned_model_and_keys_its_repair(tmp_path):
    rows = {"sft -> sft": SFT,
            "sft -> sft -> antidote": {**SFT, "repair": ["method.repair.method=antidote"]},
            "denser": {**SFT, "repair": ["method.repair.method=antidote", "method.repair.antidote.dense_ratio=0.3"]},
            "method file": {"align": ["method=antidote"], "finetune": ["method=antidote"]}}
    study = load_study(_study(tmp_path, rows))
    cells = {c.row: c for c in plan(study, tmp_path / "runs")}
    plain, rep, denser, named = (cells[r] for r in rows)
    assert plain.repair is None and plain.model_job is plain.finetune
    assert rep.finetune.name == plain.finetune.name == denser.finetune.name  # one fine-tuned model
    assert rep.model_job is rep.repair and rep.repair.stage is Stage.REPAIR and rep.repair.name.startswith("repair-")
    assert rep.repair.init_from == rep.finetune.key
    assert rep.repair.config.run.init_from == str(tmp_path / "runs" / rep.finetune.name)
    assert rep.repair.key != denser.repair.key
    # a conf/method combination names its repair in the fine-tuning config: a repair job follows
    assert named.repair is not None and named.repair.config.method.repair.method.value == "antidote"
    # nor does it key the alignment
    assert align_key(compose(["experiment=tiny", "method.repair.method=antidote"])) == align_key(compose(["experiment=tiny"]))
    order = [j.stage for j in jobs_of(list(cells.values()))]
    assert order == sorted(order, key=[Stage.ALIGN, Stage.FINETUNE, Stage.REPAIR].index)


def test_a_repair_needs_a_fine_tuned_model(tmp_path):
    with pytest.raises(ConfigError, match="`repair` repairs a fine-tuned model"):
        load_study(_study(tmp_path, {"sft -> sft": SFT, "x": {"align": [], "finetune": None, "repair": []}}))


def test_a_study_with_a_repair_row_runs_and_reports_the_repaired_model(tmp_path, capsys):
    rows = {"sft -> sft": SFT, "sft -> sft -> antidote": {**SFT, "repair": ["method.repair.method=antidote"]}}
    path = _study(tmp_path, rows)
    assert main(["study", str(path)]) == 0
    root = tmp_path / "runs" / "r"
    # a batch log (stderr is no terminal here): "cell k of n" with the time left, a line per
    # finished cell with its model's figures, a line per finished job
    err = capsys.readouterr().err
    assert "study r: cell 1 of 2 (row=sft -> sft, seed=1); left: about " in err
    assert re.search(r"study r: cell 2 of 2 done \(sft -> sft -> antidote, seed 1, repair-\w+\): HS \d+\.\d%, "
                     r"HS corrected \S+, refusal \S+, FA \d+\.\d%", err)
    assert re.search(r"job done: repair-\w+, stage repair \(antidote\)", err)
    results = json.loads((root / "results.json").read_text())
    by_row = {c["row"]: c for c in results["cells"]}
    rep = by_row["sft -> sft -> antidote"]
    assert rep["state"] == "evaluated" and rep["job"].startswith("repair-")
    assert (root / rep["job"] / "eval" / "metrics.json").is_file()
    # one alignment and one fine-tuning trained for both rows, then one repair
    assert sorted(p.name.split("-")[0] for p in root.iterdir() if p.is_dir()) == ["align", "ft", "repair"]
    # the repaired cell reports its fine-tuning run's weights (uniform SFT: the weighting as configured)
    assert rep["weighting"] == "uniform"
    compute = results["compute"]["train"]
    assert {k: v["jobs"] for k, v in compute.items()} == {"align": 1, "finetune": 1, "repair": 1}


def test_a_trial_repairs_when_its_config_names_a_repair(tmp_path):
    base = ["experiment=tiny", f"run.output_dir={tmp_path}", *STEPS]
    plain, _ = trial_cell(base)
    rep, root = trial_cell([*base, "method.repair.method=antidote"])
    assert plain.repair is None and rep.repair is not None
    assert rep.finetune.name == plain.finetune.name  # the repair setting does not key the fine-tuning
    assert main(["trial", *base, "method.repair.method=antidote"]) == 0
    saved = json.loads((root / rep.repair.name / "trial_summary.json").read_text())
    metrics = json.loads((root / rep.repair.name / "eval" / "metrics.json").read_text())["metrics"]
    assert saved["summary"]["harmful/harmful_score"] == metrics["harmful/harmful_score"]["value"]
