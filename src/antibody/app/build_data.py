"""`build-data`: fill the model-written data cache of a config before any training.

The unaligned base model answers the prompts of every model-written source the config
draws on (DataModule.prepare_data); the answers are cached under
``$ANTIBODY_CACHE/data`` and reused by every later command with the same generation
settings. Then the splits are built from the cache alone (setup) and summarised, as by
`data-summary`.

    python -m antibody build-data experiment=demo
"""

from __future__ import annotations

from antibody.config import Config, compose
from antibody.infra import progress


def build_data(cfg: Config) -> str:
    """Fill the cache for ``cfg`` and return the summary table of its splits."""
    from antibody.app.stages import Stage, new_datamodule
    from antibody.data.summary import format_summary
    from antibody.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    dm = new_datamodule(cfg, tokenizer, Stage.FINETUNE)
    # the outer bar keeps one display up for the whole build: the base model's bar comes
    # and goes with each batch the data layer hands it; the summary below is the record
    with progress.task("build-data: model-written rows", keep=False):
        dm.prepare_data()
    dm.setup("fit")  # reads the cache only
    return format_summary(dm.summary())


def build_data_command(overrides: list[str]) -> int:
    print(build_data(compose(overrides)))
    return 0
