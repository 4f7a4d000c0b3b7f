"""Loggers from config: CSV by default, W&B offline with a message when there is no key."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger, WandbLogger

from antibody.app.loggers import build_logger
from antibody.config import compose


def test_csv_is_the_default(tmp_path):
    cfg = compose(["experiment=tiny"])
    logger = build_logger(cfg, tmp_path, "align")
    assert isinstance(logger, CSVLogger)
    assert logger.log_dir.startswith(str(tmp_path))


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
    assert init["config"]["method"]["align"]["lambda_mode"] == "kkt"
    assert isinstance(init["config"], dict)


def test_wandb_mode_from_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose(["experiment=tiny", "logger=wandb"])
    assert build_logger(cfg, tmp_path, "finetune")._wandb_init["mode"] == "disabled"
