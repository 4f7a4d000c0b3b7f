"""Loggers from config: CSV by default, W&B offline with a message when there is no key."""

from __future__ import annotations

import yaml
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from antibody.app.loggers import build_logger
from antibody.config import compose, load_saved


def test_csv_is_the_default(tmp_path):
    cfg = compose(["experiment=tiny"])
    logger = build_logger(cfg, tmp_path, "align")
    assert isinstance(logger, CSVLogger)
    assert logger.log_dir.startswith(str(tmp_path))


def test_a_resumed_stage_keeps_the_logs_of_its_interrupted_part(tmp_path):
    cfg = compose(["experiment=tiny"])
    first = build_logger(cfg, tmp_path, "align")
    first.log_metrics({"loss": 1.0}, step=0)
    first.save()
    old = tmp_path / "logs" / "align" / "metrics.csv"
    assert old.read_text().splitlines()[1:] == ["1.0,0"]
    for k in (1, 2):  # two restarts
        again = build_logger(cfg, tmp_path, "align")
        assert again.log_dir == str(tmp_path / "logs" / f"align-resume{k}")
        again.log_metrics({"loss": 0.5}, step=1)
        again.save()
    assert old.read_text().splitlines()[1:] == ["1.0,0"]  # not deleted by the new writer


def test_wandb_without_key_goes_offline_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc either
    cfg = compose(["experiment=tiny", "logger=wandb", "run.name=w"])
    logger = build_logger(cfg, tmp_path, "align")
    assert isinstance(logger, WandbLogger)
    assert "no W&B API key" in capsys.readouterr().out
    init = logger._wandb_init
    assert init["mode"] == "offline" and init["name"] == "w-align"
    # the run config is the plain resolved config (a DictConfig is not a dict)
    assert init["config"]["method"]["align"]["lambda_mode"] == "cosine_ema"  # conf/method/antibody.yaml, the default method
    # ...and it is the whole config: read back, it gives the run's config
    saved = tmp_path / "logged.yaml"
    saved.write_text(yaml.safe_dump(init["config"]))
    assert type(init["config"]) is dict and load_saved(saved) == cfg


def test_wandb_mode_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose(["experiment=tiny", "logger=wandb"])
    assert build_logger(cfg, tmp_path, "finetune")._wandb_init["mode"] == "disabled"
