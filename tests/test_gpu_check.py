"""scripts/gpu_check.py (`make gpu-check`) where it can run without a GPU: the no-CUDA
path, its plan and arguments, and its one-base-many-LoRAs fit on the tiny model."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from antibody.config.schema import AlignMethod, FinetuneMethod, Stage

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_why_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device even on a GPU machine
    proc = subprocess.run([sys.executable, str(SCRIPT), "--modes", "nf4"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device" in proc.stdout and "docs/gpu.md" in proc.stdout
    n = len(AlignMethod) + len(FinetuneMethod)  # every method of both stages, in one mode
    assert f"it would run {n} variants" in proc.stdout


def test_plan_lists_every_method_of_both_stages_in_each_mode(gpu_check):
    assert gpu_check.parse_args([]).modes == [gpu_check.Mode.NF4]  # bf16 is a second run (the time budget)
    args = gpu_check.parse_args(["--modes", "bf16,nf4"])
    want = {(m, Stage.ALIGN.value, a.value) for a in AlignMethod for m in ("bf16", "nf4")}
    want |= {(m, Stage.FINETUNE.value, f.value) for f in FinetuneMethod for m in ("bf16", "nf4")}
    got = [(v.mode.value, v.stage, v.method) for v in gpu_check.plan(args.modes)]
    assert set(got) == want and len(got) == len(want)
    # SFT, the reference of the ratios, comes first in each stage of each mode
    assert [v for v in got if v[2] == "sft"] == [(m, s, "sft") for m in ("bf16", "nf4") for s in ("align", "finetune")]
    assert got.index(("bf16", "align", "sft")) < got.index(("bf16", "align", "antibody"))


def test_arguments(gpu_check):
    args = gpu_check.parse_args(["--modes", "nf4", "--steps", "3", "--layers", "4"])
    assert (args.modes, args.steps, args.layers, args.warmup) == ([gpu_check.Mode.NF4], 3, 4, 1)
    assert gpu_check.parse_args([]).layers == 32  # Llama-2-7B's depth unless told otherwise
    for bad in (["--modes", "fp8"], ["--steps", "0"], ["--layers", "0"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(bad)


def test_llama2_7b_shape_has_7b_decoder_parameters(gpu_check):
    # independent count: per layer 4 d^2 attention (32 KV heads: no GQA) + 3 d f MLP + 2 d norms
    c = gpu_check.LLAMA2_7B
    d, f, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    per_layer = 4 * d * d + 3 * d * f + 2 * d
    assert n * per_layer + d + 2 * 32000 * d == 6_738_415_616  # Llama-2-7B's published parameter count


def test_one_base_serves_each_method_a_fresh_identical_lora(gpu_check, tmp_path, monkeypatch, fake):
    """What run_mode does per method, on the CPU with the tiny model: a LoRA on the shared
    base, a fit, the LoRA removed again; every method starts from the same LoRA draw."""
    from antibody.app.bench.run import method_config
    from antibody.models import adapters, load_model

    draws = []

    def recording_apply_lora(model, lora):
        wrapped = real_apply_lora(model, lora)
        draws.append([p.detach().clone() for n, p in wrapped.named_parameters() if "lora_A" in n])
        return wrapped

    real_apply_lora = adapters.apply_lora
    monkeypatch.setattr(adapters, "apply_lora", recording_apply_lora)
    args = ["experiment=tiny", f"run.output_dir={tmp_path}"]
    base, tok = load_model(method_config(args, Stage.ALIGN, "sft", 2).model, with_lora=False)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    for stage, method in [(Stage.ALIGN, "sft"), (Stage.FINETUNE, "antibody")]:
        cfg = method_config(args, stage, method, 2)
        out = gpu_check._fit(cfg, stage.value, base, tok, steps=1, warmup=1)
        assert len(out["step_seconds"]) == 1 and out["memory"]["kind"] == "cpu_rss"
        assert not any("lora_" in n for n, _ in base.named_modules()), "LoRA left on the base"
        assert {n for n, _ in base.named_parameters()} == before.keys()
        assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    assert len(draws) == 2 and draws[0]
    assert all(torch.equal(a, b) for a, b in zip(*draws, strict=True))


def test_the_expected_time_is_printed_first_and_the_default_fits_the_budget(gpu_check):
    from antibody.app.gpu import budget

    one = gpu_check.parse_args([])
    assert budget.expected_minutes(one) <= budget.BUDGET_MINUTES
    both = gpu_check.parse_args(["--modes", "bf16,nf4"])
    assert budget.expected_minutes(both) > budget.BUDGET_MINUTES  # so the default runs one mode
    # the compute part, counted by hand for a 1-layer bf16 run of SFT-only passes: 6 N T per pass
    n = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096 + 4096 + 2 * 49152 * 4096
    assert budget.model_parameters(1) == n
    plan = subprocess.run([sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, timeout=300)
    assert "expected about" in plan.stdout and "assumed" in plan.stdout


def test_a_failing_method_is_reported_and_the_rest_still_run(gpu_check, capsys):
    times = {"sft": [[1.0, 1.2]], "antibody": [[4.0, 4.4]]}
    memory = {m: {"kind": "cuda_max_allocated", "before_fit_mib": 1000.0, "peak_mib": 1000.0 + over,
                  "over_load_mib": over} for m, over in (("sft", 100.0), ("antibody", 150.0))}
    out = gpu_check.stage_results(["sft", "booster", "antibody"], times, memory,
                                  {"booster": "OutOfMemoryError: CUDA out of memory"})
    assert out["booster"] == {"error": "OutOfMemoryError: CUDA out of memory"}
    assert out["antibody"]["ratio"] == pytest.approx(4.2 / 1.1) and out["antibody"]["memory"]["over_load_ratio"] == 1.5
    # without the reference: absolute figures, no ratios
    alone = gpu_check.stage_results(["sft", "antibody"], {"antibody": [[4.0]]}, {"antibody": memory["antibody"]},
                                    {"sft": "RuntimeError: boom"})
    assert alone["antibody"]["ratio"] is None and alone["antibody"]["median_s"] == 4.0
    args = gpu_check.parse_args([])
    results = {"align": out, "checks": {"generation": {"error": "RuntimeError: x"}}}
    assert gpu_check.report(gpu_check.Mode.NF4, results, args) == 2  # the method and the check
    text = capsys.readouterr().out
    assert "booster    FAILED: OutOfMemoryError" in text and "not paper-scale" in text
    assert "0.15" in text and "1.50" in text  # antibody: 150 MiB over the load, 1.5x SFT's


def test_the_inference_checks_run_on_a_loaded_base(tmp_path):
    """On the CPU with the tiny model: generation and the judge on a few prompts, and the
    stacked frozen adapter against the live one (the check the GPU run makes on nf4)."""
    from antibody.app.gpu.checks import PROMPTS, STACKED_LOGIT_TOLERANCE, check_failures, inference_checks
    from antibody.models import load_model

    args = ["experiment=tiny", f"run.output_dir={tmp_path}"]
    from antibody.config import compose

    base, tok = load_model(compose(args).model, with_lora=False)
    out = inference_checks(base, tok, args, tmp_path, quantised=True)
    gen = out["generation"]
    assert "error" not in gen and gen["answers"] == len(PROMPTS) and len(gen["scores"]) == len(PROMPTS)
    stacked = out["stacked_adapter"]
    assert "error" not in stacked, stacked
    assert stacked["merges_exactly"] is True  # fp32, unquantised: the tiny model could merge
    assert 0.0 <= stacked["max_abs_logit_diff"] <= STACKED_LOGIT_TOLERANCE
    resume = out["resume"]
    assert "error" not in resume, resume
    assert resume["steps"] == [2, 2] and resume["max_abs_lora_diff"] <= 1e-6  # exact on the CPU
    assert not any("lora_" in n for n, _ in base.named_modules())  # the base is left clean
    assert check_failures(out) == []
    assert check_failures({"resume": {"steps": [2, 1], "max_abs_lora_diff": 0.0}})[0].startswith("resume: steps [2, 1]")
    assert "stacked_adapter" in check_failures({"stacked_adapter": {"max_abs_logit_diff": 1.0}})[0]
