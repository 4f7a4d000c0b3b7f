"""Loggers from config: CSV by default, W&B on request (offline when no API key)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from antibody.config import Config, to_container
from antibody.config.schema import LoggerKind


def _wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def csv_version(run_dir: Path, stage: str) -> str:
    """`stage` for a first start, `stage-resumeK` for the K-th restart of the stage.

    Lightning's CSV writer deletes metrics.csv when its version folder already holds
    files, so a resumed stage writing to the same folder would lose the logged steps of
    the interrupted part. Each (re)start gets its own folder instead.
    """
    logs = Path(run_dir) / "logs"
    if not (logs / stage).exists():
        return stage
    k = 1
    while (logs / f"{stage}-resume{k}").exists():
        k += 1
    return f"{stage}-resume{k}"


def _csv(cfg: Config, run_dir: Path, stage: str) -> Logger:
    return CSVLogger(save_dir=str(run_dir), name="logs", version=csv_version(run_dir, stage))


def wandb_mode(cfg: Config, run_dir: Path) -> str:
    """WANDB_MODE, else logger.mode; online without an API key becomes offline, with a message."""
    mode = os.environ.get("WANDB_MODE") or cfg.logger.mode
    if mode == "online" and not _wandb_has_key():
        print(
            "[antibody] logger=wandb: no W&B API key (WANDB_API_KEY or ~/.netrc); logging offline to "
            f"{run_dir}/wandb — upload later with `wandb sync {run_dir}/wandb/offline-run-*`"
        )
        mode = "offline"
    return mode


def _wandb(cfg: Config, run_dir: Path, stage: str) -> Logger:
    mode = wandb_mode(cfg, run_dir)
    return WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=f"{cfg.run.name}-{stage}",
        save_dir=str(run_dir),
        mode=mode,
        tags=list(cfg.logger.tags) + [stage],
        config=to_container(cfg),  # a DictConfig is not a dict: log the plain container
    )


LOGGERS = {LoggerKind.CSV: _csv, LoggerKind.WANDB: _wandb}


def build_logger(cfg: Config, run_dir: Path, stage: str) -> Logger:
    return LOGGERS[cfg.logger.kind](cfg, run_dir, stage)
