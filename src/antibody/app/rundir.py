"""Run directories: `runs/<name>/` holds the resolved config, checkpoints, adapter, metrics.

Nothing already written is overwritten: a finished run refuses to be re-run under the
same name, an unfinished one resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antibody.config import Config, ConfigError, to_yaml

DONE = "DONE"


@dataclass
class RunDir:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def done(self) -> bool:
        return (self.path / DONE).exists()

    def mark_done(self, stage: str) -> None:
        (self.path / DONE).write_text(stage + "\n")

    def stage(self) -> str | None:
        marker = self.path / DONE
        return marker.read_text().strip() if marker.exists() else None


def run_dir_for(cfg: Config, stage: str, *, allow_done: bool = False) -> RunDir:
    """Create (or re-open an unfinished) run dir and save the resolved config."""
    run = RunDir(Path(cfg.run.output_dir) / cfg.run.name)
    if run.done and not allow_done:
        raise ConfigError(
            f"run.name={cfg.run.name!r}: {run.path} already holds a finished {run.stage()} run; "
            "choose another run.name (nothing was overwritten)"
        )
    if run.config_path.exists() and not run.done:
        saved = run.config_path.read_text()
        if saved != to_yaml(cfg):
            raise ConfigError(
                f"run.name={cfg.run.name!r}: {run.path} holds an unfinished run with a different config; "
                "resume it with the same overrides or choose another run.name"
            )
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config_path, to_yaml(cfg))
    (run.path / "stage").write_text(stage + "\n")
    return run


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename so a killed process never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def resolve_init_from(value: str, output_dir: str, stage: str = "align") -> Path:
    """An alignment run by path, by name under output_dir, or "latest" (newest finished)."""
    root = Path(output_dir)
    if value == "latest":
        done = [
            p.parent for p in root.glob(f"*/{DONE}") if p.read_text().strip() == stage
        ]
        if not done:
            raise ConfigError(
                f"run.init_from=latest: no finished {stage} run under {root}/; run `make align` first"
            )
        return max(done, key=lambda p: (p / DONE).stat().st_mtime)
    for candidate in (Path(value), root / value):
        if (candidate / "adapter").is_dir():
            return candidate
    raise ConfigError(
        f"run.init_from={value!r}: no run with an adapter at {value} or {root / value}"
    )
