"""A demo suite's results as types: one line per model (`ModelRow`) and the file around them
(`SuiteResults`), as `results[_<suite>].json` holds them. Built by `study.models`, rendered by
`demo.tables` and drawn by `study.tradeoff`; `report` reads the file into them.

The leaves are the records other files define and are kept as they are: a model's
evaluation metrics (its `eval/metrics.json`), its weight summary (`demo.tables.weight_summary`),
its sharpness probe, the judge's record, the named comparisons and the per-judge table.
A key that an older file lacks stays absent when written back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

_TRAIN_KEYS = ("train_seconds", "seconds_per_step", "detector", "final")


@dataclass
class ModelRow:
    """One evaluated model of a suite."""

    job: str
    label: Optional[str]  # the row's name in the study file
    # the evaluation's metrics: key -> {"value", "n", "stderr", ...} (eval/metrics.json)
    metrics: dict[str, dict]
    eval_seconds: Optional[float] = None
    # from the training run's metrics.json; None for the base model, which trained nothing
    train: Optional[dict[str, Any]] = None
    weights: Optional[dict] = None  # a fine-tuning run that wrote weights.jsonl
    sharpness: Optional[dict] = None  # an aligned model's sharpness probe

    def value(self, key: str) -> Optional[float]:
        m = self.metrics.get(key)
        return None if m is None else m.get("value")

    @property
    def train_seconds(self) -> Optional[float]:
        return (self.train or {}).get("train_seconds")

    @property
    def detector(self) -> Optional[dict]:
        return (self.train or {}).get("detector")

    def to_json(self) -> dict:
        out: dict[str, Any] = {"job": self.job, "label": self.label, "metrics": self.metrics,
                               "eval_seconds": self.eval_seconds}
        if self.train is not None:
            out.update(self.train)
        if self.weights is not None:
            out["weights"] = self.weights
        if self.sharpness is not None:
            out["sharpness"] = self.sharpness
        return out

    @classmethod
    def from_json(cls, d: dict) -> ModelRow:
        train = {k: d.get(k) for k in _TRAIN_KEYS} if any(k in d for k in _TRAIN_KEYS) else None
        return cls(d["job"], d.get("label"), d["metrics"], d.get("eval_seconds"), train,
                   d.get("weights"), d.get("sharpness"))


@dataclass
class SuiteResults:
    """Everything `results[_<suite>].json` holds; None: absent from an older file."""

    config: str
    task: str
    eval_sizes: dict[str, Optional[int]]
    rows: list[ModelRow]
    demo_seconds_this_invocation: Optional[float] = None
    jobs_trained_this_invocation: Optional[int] = None
    jobs_evaluated_this_invocation: Optional[int] = None
    suite: Optional[str] = None
    comparisons: Optional[list[dict]] = None  # study.models.named_comparisons' records
    judge: Optional[dict] = None  # the judge that scored every model, with its validation
    by_judge: Optional[dict] = field(default=None)  # judge.change.hs_by_judge

    _OPTIONAL = ("demo_seconds_this_invocation", "jobs_trained_this_invocation", "jobs_evaluated_this_invocation",
                 "suite", "comparisons", "judge", "by_judge")

    def to_json(self) -> dict:
        out: dict[str, Any] = {"config": self.config, "task": self.task, "eval_sizes": self.eval_sizes,
                               "rows": [r.to_json() for r in self.rows]}
        for key in self._OPTIONAL:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, d: dict) -> SuiteResults:
        return cls(d.get("config", "demo"), d.get("task", "?"), dict(d.get("eval_sizes") or {}),
                   [ModelRow.from_json(r) for r in d.get("rows") or []],
                   **{k: d.get(k) for k in cls._OPTIONAL})
