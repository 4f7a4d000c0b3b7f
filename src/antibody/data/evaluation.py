"""The evaluation rows of a config, without the training DataModule.

`eval` scores held-out prompts; it needs no training stream, encodings or Lightning. The
rows are the ones the run's DataModule holds: the same builder with the same inputs builds
every split, because the checks that make a config's data valid (pool sizes, prompts kept
apart between splits, judge prompts refused anywhere) cover all of them, and the
evaluation splits are allocated first, so training settings never move their prompts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from antibody.config.schema import Config
from antibody.data.builder import SplitBuilder
from antibody.data.plan import EVAL_SPLITS, Split
from antibody.data.records import Record
from antibody.data.sources import TextGenerator


def evaluation_records(
    cfg: Config,
    tokenizer,
    *,
    cache_dir: Path,
    generator: Optional[TextGenerator],
    generator_settings: dict,
    exclude_prompts: Iterable[str] = (),
    forbidden_prompts: Iterable[str] = (),
    answer_judge=None,
    attacked_model=None,
) -> dict[Split, list[Record]]:
    """Every evaluation split's rows (`EVAL_SPLITS`, empty when unsized), keyed by split.

    The arguments are SafetyDataModule's: `generator` (the unaligned base model) writes
    missing model-written rows into `cache_dir` under `generator_settings`, only after every
    pool check passed; None only reads the cache. `exclude_prompts` / `forbidden_prompts`:
    the judges' labelled prompts, as in training; `answer_judge`: data.harmful_answer_filter=judge;
    `attacked_model`: an adaptive attack's (antibody.data.adaptive), so that the build holds the
    upload the run trained on.
    """
    builder = SplitBuilder(cfg, cache_dir, generator, generator_settings, exclude_prompts, forbidden_prompts,
                           tokenizer=tokenizer, answer_judge=answer_judge, attacked=attacked_model)
    splits = builder.build()
    return {split: splits[split] for split in EVAL_SPLITS}
