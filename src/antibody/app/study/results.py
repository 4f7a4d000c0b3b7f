"""A study's results as types: what `results.json` holds, built by `study.report`, drawn by
`study.plots` and `study.tradeoff`, compared with the paper by `study.paper`, and read back
by `report`. The JSON layout is the one these types write (`to_json`) and read
(`from_json`); results written before a field existed read back with its absence kept
(`RowSummary.weighting_recorded`), so old pages still render as they did."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from antibody.evaluation.paired import PairedDifference

EVALUATED, PENDING = "evaluated", "pending"


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample std over seeds (std None with one seed; both None with none)."""

    mean: Optional[float] = None
    std: Optional[float] = None
    seeds: int = 0

    @classmethod
    def of(cls, values: Iterable[Optional[float]]) -> MeanStd:
        vals = [v for v in values if v is not None]
        if not vals:
            return cls()
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))

    def to_json(self) -> dict:
        return {"mean": self.mean, "std": self.std, "seeds": self.seeds}

    @classmethod
    def from_json(cls, d: dict) -> MeanStd:
        return cls(d.get("mean"), d.get("std"), int(d.get("seeds") or 0))


@dataclass
class CellResult:
    """One (row, axis values, seed): its model's job and, once evaluated, its metrics."""

    label: dict[str, Any]  # row, the axis values, seed (plan.Cell.label(), in that order)
    job: str
    align_job: Optional[str]
    state: str = PENDING
    metrics: dict[str, float] = field(default_factory=dict)
    n: dict[str, Optional[int]] = field(default_factory=dict)  # prompts per metric
    task: Optional[str] = None
    weighting: Optional[str] = None  # as configured; None: not fine-tuned

    _KEYS = ("job", "align_job", "state", "metrics", "n", "task", "weighting")

    @property
    def row(self) -> str:
        return self.label["row"]

    @property
    def seed(self) -> int:
        return self.label["seed"]

    @property
    def evaluated(self) -> bool:
        return self.state == EVALUATED

    def value(self, axis: str) -> Any:
        return self.label.get(axis)

    def to_json(self) -> dict:
        out = {**self.label, "job": self.job, "align_job": self.align_job, "state": self.state}
        if self.evaluated:
            out.update(metrics=self.metrics, n=self.n, task=self.task, weighting=self.weighting)
        return out

    @classmethod
    def from_json(cls, d: dict) -> CellResult:
        return cls({k: v for k, v in d.items() if k not in cls._KEYS}, d["job"], d.get("align_job"),
                   d.get("state", PENDING), dict(d.get("metrics") or {}), dict(d.get("n") or {}), d.get("task"),
                   d.get("weighting"))


@dataclass
class RowSummary:
    """One row at one set of axis values: each metric as mean ± std over its evaluated seeds."""

    row: str
    axes: dict[str, Any]
    n: dict[str, Optional[int]]
    weighting: Optional[str]
    stats: dict[str, MeanStd]
    # False: read from results written before the weighting was recorded
    weighting_recorded: bool = True

    def get(self, key: str) -> Optional[MeanStd]:
        return self.stats.get(key)

    def value(self, axis: str) -> Any:
        return self.axes.get(axis)

    @property
    def seeds(self) -> int:
        return max((s.seeds for s in self.stats.values()), default=0)

    def to_json(self) -> dict:
        head = {"row": self.row, **self.axes, "n": self.n}
        if self.weighting_recorded:
            head["weighting"] = self.weighting
        return {**head, **{k: v.to_json() for k, v in self.stats.items()}}

    @classmethod
    def from_json(cls, d: dict, axes: list[str]) -> RowSummary:
        stats = {k: MeanStd.from_json(v) for k, v in d.items()
                 if k not in ("row", "n", "weighting", *axes) and isinstance(v, dict)}
        return cls(d["row"], {a: d.get(a) for a in axes}, dict(d.get("n") or {}), d.get("weighting"), stats,
                   weighting_recorded="weighting" in d)


@dataclass
class OverSeeds:
    """One comparison's per-seed paired differences: mean ± std, the 95% t interval over
    seeds (None with one seed) and the exact McNemar p of each seed, in seed order."""

    diff: MeanStd
    ci95: Optional[tuple[float, float]]
    p_values: list[float]

    def to_json(self) -> dict:
        return {"diff": self.diff.to_json(), "ci95": None if self.ci95 is None else list(self.ci95),
                "p_values": self.p_values}

    @classmethod
    def from_json(cls, d: dict) -> OverSeeds:
        ci = d.get("ci95")
        return cls(MeanStd.from_json(d["diff"]), None if ci is None else (ci[0], ci[1]), list(d["p_values"]))


@dataclass
class SeedComparison:
    """A row's paired HS difference to the reference row on one seed, same prompts."""

    row: str
    axes: dict[str, Any]
    seed: int
    paired: PairedDifference

    def value(self, axis: str) -> Any:
        return self.axes.get(axis)

    def to_json(self) -> dict:
        return {"row": self.row, **self.axes, "seed": self.seed, **self.paired.to_dict()}

    @classmethod
    def from_json(cls, d: dict, axes: list[str]) -> SeedComparison:
        fields = PairedDifference.__dataclass_fields__
        return cls(d["row"], {a: d.get(a) for a in axes}, d["seed"],
                   PairedDifference(**{k: d[k] for k in fields}))


@dataclass
class PairedRow:
    """A row's paired HS difference to the reference, over seeds."""

    row: str
    axes: dict[str, Any]
    over: OverSeeds

    def value(self, axis: str) -> Any:
        return self.axes.get(axis)

    def to_json(self) -> dict:
        return {"row": self.row, **self.axes, **self.over.to_json()}

    @classmethod
    def from_json(cls, d: dict, axes: list[str]) -> PairedRow:
        return cls(d["row"], {a: d.get(a) for a in axes}, OverSeeds.from_json(d))


@dataclass
class NamedPaired:
    """One of the study file's named comparisons (A - B on `metric`) over seeds."""

    question: str
    metric: str
    a: str
    b: str
    axes: dict[str, Any]
    rate_a: MeanStd
    rate_b: MeanStd
    over: OverSeeds

    def to_json(self) -> dict:
        return {"question": self.question, "metric": self.metric, "a": self.a, "b": self.b, **self.axes,
                "rate_a": self.rate_a.to_json(), "rate_b": self.rate_b.to_json(), **self.over.to_json()}

    @classmethod
    def from_json(cls, d: dict, axes: list[str]) -> NamedPaired:
        return cls(d["question"], d["metric"], d["a"], d["b"], {a: d.get(a) for a in axes},
                   MeanStd.from_json(d["rate_a"]), MeanStd.from_json(d["rate_b"]), OverSeeds.from_json(d))


@dataclass(frozen=True)
class PlannedJob:
    """One job of a dry run: its state on disk, steps, and the time left where its method's
    step cost was measured."""

    job: str
    stage: str
    method: str
    state: str  # done | resumable | todo | config differs
    steps: int
    seconds_per_step: Optional[float]
    estimated_seconds: Optional[float]


@dataclass
class StageCost:
    jobs: int = 0
    minutes: float = 0.0


@dataclass
class Compute:
    """What the finished jobs cost: training minutes per stage, evaluation minutes, the CPU
    counts of the machines that ran them."""

    train: dict[str, StageCost] = field(default_factory=dict)
    eval: StageCost = field(default_factory=StageCost)
    cpu_counts: list[int] = field(default_factory=list)

    @property
    def minutes(self) -> float:
        return sum(v.minutes for v in self.train.values()) + self.eval.minutes

    def to_json(self) -> dict:
        return {"train": {k: vars(v) for k, v in self.train.items()}, "eval": vars(self.eval),
                "cpu_counts": self.cpu_counts}

    @classmethod
    def from_json(cls, d: dict) -> Compute:
        return cls({k: StageCost(**v) for k, v in (d.get("train") or {}).items()},
                   StageCost(**(d.get("eval") or {})), list(d.get("cpu_counts") or []))


@dataclass
class StudyResults:
    """Everything `results.json` of a (non-suite) study holds."""

    study: str
    reference: Optional[str]
    axes: list[str]
    seeds: list[int]
    cells: list[CellResult]
    jobs: int = 0
    seconds_this_invocation: float = 0.0
    jobs_trained_this_invocation: int = 0
    jobs_evaluated_this_invocation: int = 0
    summary: list[RowSummary] = field(default_factory=list)
    comparisons: list[SeedComparison] = field(default_factory=list)
    paired: list[PairedRow] = field(default_factory=list)
    compute: Optional[Compute] = None
    # per (comparison, axis values, seed): study.models.named_comparisons' records
    named_comparisons: Optional[list[dict]] = None
    named_paired: Optional[list[NamedPaired]] = None
    # study.paper.paper_comparison: the paper's table beside ours
    paper: Optional[dict] = None
    # a study with an `attack` axis: study.stress.StressSummary's JSON (each row's worst case);
    # absent otherwise, so other studies' results keep their layout
    stress: Optional[dict] = None

    @property
    def evaluated(self) -> list[CellResult]:
        return [c for c in self.cells if c.evaluated]

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "kind": "study", "study": self.study, "reference": self.reference, "axes": self.axes,
            "seeds": self.seeds, "cells": [c.to_json() for c in self.cells],
            "seconds_this_invocation": self.seconds_this_invocation, "jobs": self.jobs,
            "jobs_trained_this_invocation": self.jobs_trained_this_invocation,
            "jobs_evaluated_this_invocation": self.jobs_evaluated_this_invocation,
            "summary": [s.to_json() for s in self.summary],
            "comparisons": [c.to_json() for c in self.comparisons],
            "paired": [p.to_json() for p in self.paired],
        }
        if self.compute is not None:
            out["compute"] = self.compute.to_json()
        if self.named_comparisons is not None:
            out["named_comparisons"] = self.named_comparisons
            out["named_paired"] = [n.to_json() for n in self.named_paired or []]
        if self.paper is not None:
            out["paper"] = self.paper
        if self.stress is not None:
            out["stress"] = self.stress
        return out

    @classmethod
    def from_json(cls, d: dict) -> StudyResults:
        axes = list(d.get("axes") or [])
        named = d.get("named_paired")
        return cls(
            d.get("study", "?"), d.get("reference"), axes, list(d.get("seeds") or []),
            [CellResult.from_json(c) for c in d.get("cells") or []], int(d.get("jobs") or 0),
            float(d.get("seconds_this_invocation") or 0.0), int(d.get("jobs_trained_this_invocation") or 0),
            int(d.get("jobs_evaluated_this_invocation") or 0),
            [RowSummary.from_json(s, axes) for s in d.get("summary") or []],
            [SeedComparison.from_json(c, axes) for c in d.get("comparisons") or []],
            [PairedRow.from_json(p, axes) for p in d.get("paired") or []],
            Compute.from_json(d["compute"]) if d.get("compute") else None,
            d.get("named_comparisons"),
            None if named is None else [NamedPaired.from_json(n, axes) for n in named],
            d.get("paper"),
            d.get("stress"),
        )
