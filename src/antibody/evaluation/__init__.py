"""Evaluation: batched greedy generation, harm judges, answer extractors, metrics with
intervals, a declarative task registry and a resumable evaluator."""

from antibody.evaluation.evaluator import evaluate, read_predictions
from antibody.evaluation.extractors import ExtractorKind, extract_label, extract_number
from antibody.evaluation.generation import generate, make_text_generator
from antibody.evaluation.judges import Judge, build_judge, is_refusal
from antibody.evaluation.metrics import RateResult, is_incoherent, wilson_interval
from antibody.evaluation.tasks import (
    TASKS,
    EvalTask,
    EvalTaskName,
    MetricKind,
    accuracy_task_for,
    get_task,
    tasks_for,
)

__all__ = [
    "TASKS",
    "EvalTask",
    "EvalTaskName",
    "ExtractorKind",
    "Judge",
    "MetricKind",
    "RateResult",
    "accuracy_task_for",
    "tasks_for",
    "build_judge",
    "evaluate",
    "extract_label",
    "extract_number",
    "generate",
    "get_task",
    "is_incoherent",
    "is_refusal",
    "make_text_generator",
    "read_predictions",
    "wilson_interval",
]
