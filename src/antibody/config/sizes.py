"""Row counts of the hub datasets at their current ids, so that a config asking for more
rows than a dataset has fails when it is composed (no download, no GPU time).

Counts are those of the datasets' cards on the Hugging Face Hub (split sizes listed in
each card's `dataset_info`); BeaverTails-Evaluation: 700 prompts, 50 per category (its
card and the paper); the RepNoise alignment file holds 5000 rows (released scripts).
They apply only when `data.paths.<source>` names that hub id: a local file or a mirror
under another id is not checked here (the DataModule's pool checks still are).

The check lives in config, beside the row counts it compares (antibody.config.counts), so
that compose runs it without importing the data layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from antibody.config.counts import SplitCounts
from antibody.config.schema import Config, SourceName


@dataclass(frozen=True)
class KnownSize:
    hub_ids: tuple[str, ...]  # the current id first, then older aliases with the same rows
    train: Optional[int]  # the split the upload's task rows come from
    eval: Optional[int]  # the split FA (or HS) is measured on
    eval_split: str


KNOWN_SIZES: dict[SourceName, KnownSize] = {
    SourceName.GSM8K: KnownSize(("openai/gsm8k", "gsm8k"), 7473, 1319, "test"),
    SourceName.SST2: KnownSize(("stanfordnlp/sst2", "sst2"), 67349, 872, "validation"),
    SourceName.AGNEWS: KnownSize(("fancyzhx/ag_news", "ag_news"), 120000, 7600, "test"),
    SourceName.BEAVERTAILS_EVAL: KnownSize(("PKU-Alignment/BeaverTails-Evaluation",), None, 700, "test"),
    # AlpacaEval task: upload rows from Alpaca's 52,002, evaluation on AlpacaEval's 805 prompts
    SourceName.ALPACA: KnownSize(("tatsu-lab/alpaca",), 52002, 805, "AlpacaEval eval"),
}


def _known(cfg: Config, source: SourceName) -> Optional[KnownSize]:
    known = KNOWN_SIZES.get(source)
    if known is None:
        return None
    return known if cfg.data.paths.get(source.value) in known.hub_ids else None


def size_problems(cfg: Config) -> list[str]:
    """Every count of the config that exceeds a known hub split, as a message naming the key."""
    problems = []
    task = _known(cfg, cfg.task.name)
    if task is not None and task.eval is not None and cfg.data.eval.n_task > task.eval:
        problems.append(f"data.eval.n_task={cfg.data.eval.n_task} exceeds the {task.eval} rows of "
                        f"{cfg.task.name.value}'s {task.eval_split} split; set data.eval.n_task<={task.eval}")
    if task is not None and task.train is not None:
        counts = SplitCounts.from_config(cfg)
        need = counts.user_task + counts.align_task  # both drawn from the train split
        if need > task.train:
            problems.append(f"data.user.n={cfg.data.user.n} and data.alignment.benign_task_ratio="
                            f"{cfg.data.alignment.benign_task_ratio} need {need} {cfg.task.name.value} rows, more than "
                            f"its train split's {task.train}; lower data.user.n")
    for source in cfg.data.eval.harmful_prompt_sources:
        known = _known(cfg, SourceName(source))
        if known is not None and known.eval is not None and cfg.data.eval.n_harmful > known.eval:
            problems.append(f"data.eval.n_harmful={cfg.data.eval.n_harmful} exceeds the {known.eval} prompts of "
                            f"{SourceName(source).value}; set data.eval.n_harmful<={known.eval}")
    return problems
