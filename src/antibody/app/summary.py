"""`data-summary`: the composition of every split for a config."""

from __future__ import annotations

from antibody.config import Config, compose


def data_summary(cfg: Config) -> str:
    from antibody.app.stages import Stage, build_datamodule
    from antibody.data.summary import format_summary
    from antibody.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    dm = build_datamodule(cfg, tokenizer, Stage.FINETUNE)
    return format_summary(dm.summary())


def data_summary_command(overrides: list[str]) -> int:
    print(data_summary(compose(overrides)))
    return 0
