"""Model-written rows are written once (prepare_data / build-data); with a warm cache the
commands that only read data never call the base-model generator, so never load it."""

from __future__ import annotations

import pytest

from antibody.app import stages
from antibody.config import compose
from antibody.config.errors import DataError
from antibody.config.schema import Stage

# model-written harmful answers and benign prose everywhere they can be used
MODEL_WRITTEN = (
    "data.alignment.harmful_answer_source=generated_harmful",
    "data.user.harmful_answer_source=generated_harmful",
    "data.alignment.benign_prose_ratio=1.0",
    "data.user.benign_prose_share=0.5",
)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTIBODY_CACHE", str(tmp_path / "cache"))
    return compose(["experiment=tiny", f"run.output_dir={tmp_path / 'runs'}", *MODEL_WRITTEN])


def _with_generator(monkeypatch, generate):
    real = stages.lazy_base_generator

    def factory(cfg):
        _, settings = real(cfg)  # the real cache key settings; its generator is discarded
        return generate, settings

    monkeypatch.setattr(stages, "lazy_base_generator", factory)


def test_warm_cache_never_calls_the_generator(cfg, monkeypatch):
    from antibody.app.bench.run import _time_variant
    from antibody.app.evaluate import eval_records
    from antibody.app.summary import data_summary
    from antibody.models import load_tokenizer

    written: list[str] = []

    def fake(prompts: list[str]) -> list[str]:
        written.extend(prompts)
        return [f"Here is a helpful answer: {p[:30]}" for p in prompts]

    _with_generator(monkeypatch, fake)
    tokenizer = load_tokenizer(cfg.model)
    stages.build_datamodule(cfg, tokenizer, Stage.FINETUNE)  # what build-data does: fills the cache
    assert len(written) > 20

    def must_not_run(prompts: list[str]) -> list[str]:
        raise AssertionError(f"the generator was called for {len(prompts)} prompts")

    _with_generator(monkeypatch, must_not_run)
    table = data_summary(cfg)
    assert "generated_harmful" in table and "benign_prose" in table
    records = eval_records(cfg, tokenizer)
    assert sum(len(v) for v in records.values()) == cfg.data.eval.n_harmful + cfg.data.eval.n_benign + cfg.data.eval.n_task
    dm = stages.build_datamodule(cfg, tokenizer, Stage.FINETUNE)  # the demo's sharpness probe
    assert sum(r.is_harmful for r in dm.records("user")) == 4
    timing = _time_variant(cfg, "align", steps=1)  # bench: trains a step on the read rows
    assert timing["steps_timed"] == 1


def test_cold_cache_without_generator_names_build_data(cfg, monkeypatch):
    def must_not_run(prompts: list[str]) -> list[str]:
        raise AssertionError("no generator in setup()")

    from antibody.data.datamodule import SafetyDataModule
    from antibody.models import load_tokenizer

    dm = SafetyDataModule(cfg, load_tokenizer(cfg.model), "finetune", generator=must_not_run)
    with pytest.raises(DataError, match="antibody build-data"):
        dm.setup()
