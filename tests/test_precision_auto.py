"""trainer.precision=auto: resolved once at compose to what the hardware runs natively, so a
saved config and a study key never say "auto" (config/precision.py)."""

from __future__ import annotations

import pytest

from antibody.config import compose
from antibody.config.compose import apply_overrides, to_yaml
from antibody.config.errors import ConfigError
from antibody.config.precision import NATIVE_BF16_ENV, _cpuinfo_flags, _detected_native_bf16, native_cpu_bf16


@pytest.mark.parametrize(("native", "expected", "attention"), [("1", "bf16-mixed", "eager"), ("0", "32-true", None)])
def test_the_demo_trains_in_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native, expected, attention):
    monkeypatch.setenv(NATIVE_BF16_ENV, native)
    cfg = compose(["experiment=demo"])
    assert cfg.trainer.precision == expected and cfg.trainer.attention == attention
    assert f"precision: {expected}" in to_yaml(cfg) and "precision: auto" not in to_yaml(cfg)
    # fp32 keeps the saved config (and so the keys) it had before: no attention key at all
    assert ("attention: eager" in to_yaml(cfg)) == (attention == "eager") and "attention: null" not in to_yaml(cfg)
    assert cfg.model.attn_implementation is None  # generation keeps the model's kernel


def test_an_attention_the_config_names_is_kept_and_a_wrong_one_is_refused(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert compose(["experiment=demo", "trainer.attention=sdpa"]).trainer.attention == "sdpa"
    assert compose(["experiment=demo", "trainer.precision=bf16-mixed"]).trainer.attention is None  # explicit: as named
    with pytest.raises(ConfigError, match=r"trainer.attention='eagr' is not allowed; choose one of eager, sdpa"):
        compose(["experiment=tiny", "trainer.attention=eagr"])


def test_training_switches_the_model_to_its_attention_and_evaluation_loads_the_models_own(monkeypatch):
    from antibody.app.stages import module_for
    from antibody.config.schema import Stage
    from antibody.models import load_model

    cfg = compose(["experiment=tiny", "trainer.attention=eager"])
    model, _ = load_model(cfg.model)
    assert model.config._attn_implementation == "sdpa"
    module_for(Stage.FINETUNE, model, cfg)
    assert model.config._attn_implementation == "eager"
    assert load_model(cfg.model)[0].config._attn_implementation == "sdpa"


def test_an_explicit_precision_is_kept_and_auto_on_a_gpu_is_bf16(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    assert compose(["experiment=demo", "trainer.precision=32-true"]).trainer.precision == "32-true"
    assert compose(["experiment=tiny"]).trainer.precision == "32-true"  # the CPU default is not auto
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    assert compose(["trainer=gpu", "trainer.precision=auto"]).trainer.precision == "bf16-mixed"


def test_auto_on_an_overridden_saved_config_resolves_too(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    cfg = apply_overrides(compose(["experiment=tiny"]), ["trainer.precision=auto"])
    assert cfg.trainer.precision == "bf16-mixed"


def test_auto_with_an_accelerator_it_cannot_read_is_refused_at_compose():
    with pytest.raises(ConfigError, match=r"trainer.precision=auto needs trainer.accelerator cpu, gpu or cuda"):
        compose(["experiment=tiny", "trainer.precision=auto", "trainer.accelerator=auto"])


def test_a_malformed_override_is_named(monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match=rf"{NATIVE_BF16_ENV}='yes': use 0 or 1"):
        native_cpu_bf16()


def test_the_job_key_follows_the_resolved_precision(monkeypatch):
    from antibody.app.study.plan import align_key

    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    fp32 = compose(["experiment=demo"])
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    bf16 = compose(["experiment=demo"])
    pinned = compose(["experiment=demo", "trainer.precision=bf16-mixed", "trainer.attention=eager"])
    assert align_key(bf16) == align_key(pinned) != align_key(fp32)


def test_cpuinfo_flags_are_read_from_the_first_cpu(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert _cpuinfo_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    assert _cpuinfo_flags(tmp_path / "missing") is None


def test_detection_agrees_with_torch_on_this_machine():
    """An independent answer: torch's own CPU capability checks (x86 Linux)."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or _cpuinfo_flags() is None:
        pytest.skip("the cpuinfo path is Linux x86 only")
    by_torch = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert _detected_native_bf16() == by_torch
