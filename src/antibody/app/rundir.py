"""Run directories: `runs/<name>/` holds the resolved config, checkpoints, adapter, metrics.

Nothing already written is overwritten: a finished run refuses to be re-run under the
same name, an unfinished one resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from antibody.config import Config, ConfigError, load_saved, to_yaml
from antibody.infra.files import atomic_write_json, atomic_write_text

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


def config_matches(path: Path, cfg: Config) -> bool:
    """True when the config saved at ``path`` trains what ``cfg`` trains.

    The saved file is read back through the schema, so a key added to the schema after the
    run was written takes its default: a run is not orphaned by a new option that does not
    change what it did (every new key's default keeps the old behaviour: docs/method.md
    ("Composing methods")). A key the schema no longer has makes it a different config.
    The `eval` group is left out: it says how a model is judged, never how it is trained
    (no training code reads it; the judges' data is kept out of the pools whatever the
    judge), so a better judge does not orphan trained models.
    """
    try:
        saved = load_saved(path)
    except ConfigError:
        return False
    return to_yaml(dataclasses.replace(saved, eval=cfg.eval)) == to_yaml(cfg)


def launch_rank(devices_per_node: int) -> int:
    """This process's global rank as its launcher set it, readable before any process group
    exists (docs/multi-gpu.md): torchrun sets RANK; Lightning's own launcher NODE_RANK and
    LOCAL_RANK (its first process on a node has LOCAL_RANK unset); SLURM's srun
    SLURM_PROCID. SLURM_PROCID comes last because processes that Lightning starts inside
    one SLURM task all inherit the task's value. A single process is rank 0."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env or "NODE_RANK" in env:
        return int(env.get("NODE_RANK", 0)) * devices_per_node + int(env.get("LOCAL_RANK", 0))
    return int(env.get("SLURM_PROCID", 0))


def launch_world_size() -> int:
    """How many processes the launcher started (torchrun and Lightning: WORLD_SIZE; srun:
    SLURM_STEP_NUM_TASKS, the tasks of this job step); 1 when nothing says otherwise."""
    env = os.environ
    return int(env.get("WORLD_SIZE") or env.get("SLURM_STEP_NUM_TASKS") or 1)


def run_dir_for(cfg: Config, stage: str, *, allow_done: bool = False, write: bool = True) -> RunDir:
    """Create (or re-open an unfinished) run dir and save the resolved config.

    ``write=False`` (ranks other than zero of a multi-process run): check only, the
    config and stage files are rank zero's to write.
    """
    run = RunDir(Path(cfg.run.output_dir) / cfg.run.name)
    if run.done and not allow_done:
        raise ConfigError(
            f"run.name={cfg.run.name!r}: {run.path} already holds a finished {run.stage()} run; "
            "choose another run.name (nothing was overwritten)"
        )
    if run.config_path.exists() and not run.done:
        if not config_matches(run.config_path, cfg):
            raise ConfigError(
                f"run.name={cfg.run.name!r}: {run.path} holds an unfinished run with a different config; "
                "resume it with the same overrides or choose another run.name"
            )
    run.path.mkdir(parents=True, exist_ok=True)
    if write:
        atomic_write_text(run.config_path, to_yaml(cfg))
        (run.path / "stage").write_text(stage + "\n")
    return run


def write_json(path: Path, data: Any) -> None:
    """A run's JSON files, as they were always written: ASCII-escaped, and values JSON cannot
    encode (a Path, say) written as str rather than failing after the stage's work is done."""
    atomic_write_json(path, data, ensure_ascii=True, default=str)


def read_base_adapters(run_dir: Path) -> list[str]:
    """Adapters merged into the base model beneath a run's own adapter (in order)."""
    path = Path(run_dir) / "base_adapters.json"
    return json.loads(path.read_text()) if path.is_file() else []


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


def write_results(folder: Path, name: str, results: dict, table: str, echo: bool = True) -> None:
    """A command's results file and its Markdown table side by side (`table.md`), the table
    also printed: what `study` and `judge-eval` leave behind."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / name, results)
    (folder / "table.md").write_text(table + "\n")
    if echo:
        print(table)
        print(f"[antibody] wrote {folder / name} and {folder / 'table.md'}")
