"""A study's log lines per cell: "cell k of n" with the time left, estimated from the step
costs and evaluation times already measured beside the study (the dry run's figures), and
one summary line when the cell's model is evaluated. What a batch job's log shows of a
study that runs for hours."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from antibody.app.evaluate import metrics_line
from antibody.app.study.plan import Cell
from antibody.infra.progress import duration

log = logging.getLogger(__name__)


class CellClock:
    """`estimates`: seconds left per job name (None: no measured cost; 0: done), as the dry
    run gives them; `eval_seconds`: a measured evaluation's wall time (None: none yet)."""

    def __init__(self, study: str, root: Path, cells: list[Cell], estimates: dict[str, Optional[float]],
                 eval_seconds: Optional[float]):
        self.study, self.root, self.cells = study, root, cells
        self.estimates, self.eval_seconds = dict(estimates), eval_seconds

    def left(self, k: int) -> tuple[float, int]:
        """Seconds of the work left from cell k on (0-based), and how many parts of it have
        no measured cost (counted as 0)."""
        seconds, unknown, seen = 0.0, 0, set()
        for cell in self.cells[k:]:
            for job in (cell.align, cell.finetune, cell.repair):
                if job is None or job.name in seen:
                    continue
                seen.add(job.name)
                est = self.estimates.get(job.name)
                unknown += est is None
                seconds += est or 0.0
            model = cell.model_job.name
            if f"eval:{model}" not in seen and not (self.root / model / "eval" / "metrics.json").is_file():
                seen.add(f"eval:{model}")
                unknown += self.eval_seconds is None
                seconds += self.eval_seconds or 0.0
        return seconds, unknown

    def start(self, k: int) -> None:
        cell = self.cells[k]
        seconds, unknown = self.left(k)
        label = ", ".join(f"{key}={value}" for key, value in cell.label().items())
        missing = f" (+ {unknown} parts with no measured cost yet)" if unknown else ""
        log.info("study %s: cell %d of %d (%s); left: about %s%s", self.study, k + 1, len(self.cells), label,
                 duration(seconds), missing)

    def done(self, k: int) -> None:
        cell = self.cells[k]
        path = self.root / cell.model_job.name / "eval" / "metrics.json"
        metrics = json.loads(path.read_text()).get("metrics", {}) if path.is_file() else {}
        log.info("study %s: cell %d of %d done (%s, seed %d, %s): %s", self.study, k + 1, len(self.cells),
                 cell.row, cell.seed, cell.model_job.name, metrics_line(metrics))
