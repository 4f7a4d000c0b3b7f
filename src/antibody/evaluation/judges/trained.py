"""Trained judges' cache: fit once, keep the payload under the cache dir, reuse it."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

from antibody.config.errors import DataError
from antibody.infra.files import atomic_write_pickle
from antibody.infra.progress import ONCE

log = logging.getLogger(__name__)


def load_or_train(name: str, version: str, cache_dir: Path, fit: Callable[[], dict]) -> tuple[dict, Path, bool]:
    """`cache_dir/judges/<name>-<version>.pkl`, or `fit()` written there (atomically);
    returns (payload, path, trained now)."""
    path = Path(cache_dir) / "judges" / f"{name}-{version}.pkl"
    if path.is_file():
        with open(path, "rb") as fh:
            payload = pickle.load(fh)  # our own cache file, written below
        if payload.get("version") != version:
            raise DataError(f"{path}: cached judge has version {payload.get('version')!r}, "
                            f"expected {version!r}; delete the file to retrain")
        return payload, path, False
    payload = dict(fit(), version=version)
    atomic_write_pickle(path, payload)
    return payload, path, True


def announce(name: str, version: str, trained: bool, report: dict) -> None:
    """One line per judge and process (a study or the bench loads the same judge for every
    job; ONCE keeps the repeats out of the console and each run's log.txt)."""
    log.info("judge %s %s (%s): validation AUROC %.3f (n=%d rows, %d prompts; `python -m antibody judge-eval` "
             "for the full report)", name, version, "trained" if trained else "loaded from cache",
             report["validation_auroc"], report["n_validation"], report["n_validation_prompts"], extra=ONCE)
