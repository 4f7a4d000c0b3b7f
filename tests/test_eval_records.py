"""`eval` reads its records from the data layer (antibody.data.evaluation), not from a
training DataModule, and they are the rows the run's DataModule holds."""

from __future__ import annotations

import pytest

from antibody.config import compose
from antibody.config.schema import Stage


def test_eval_records_are_the_datamodules_rows_without_building_one(tiny_cfg, monkeypatch):
    from antibody.app import stages
    from antibody.app.evaluate import eval_records
    from antibody.data import datamodule
    from antibody.evaluation.tasks import EvalTaskName, tasks_for
    from antibody.models import load_tokenizer

    cfg = compose(["experiment=tiny", f"run.output_dir={tiny_cfg.run.output_dir}",
                   "data.eval.n_harmful_second=5", "data.eval.n_benign_edgy=6"])
    tok = load_tokenizer(cfg.model)
    dm = stages.build_datamodule(cfg, tok, Stage.FINETUNE)
    want = {task.name.value: dm.records(task.split) for task in tasks_for(cfg)}

    def no_datamodule(*args, **kwargs):
        raise AssertionError("eval built a training DataModule")

    monkeypatch.setattr(datamodule, "SafetyDataModule", no_datamodule)
    got = eval_records(cfg, tok)
    assert set(got) == {t.value for t in (EvalTaskName.HARMFUL, EvalTaskName.BENIGN, EvalTaskName.HARMFUL_SECOND,
                                          EvalTaskName.BENIGN_EDGY, cfg.task.name)}
    assert got == want
    with pytest.raises(AssertionError, match="DataModule"):
        stages.build_datamodule(cfg, tok, Stage.FINETUNE)  # the guard above is live
