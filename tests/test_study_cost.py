"""Counted cost of a study (app/study/cost.py): the FLOP count against a hand computation,
the hours at each accelerator's stated rate, and the dry run's --gpu option."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

from antibody.app.study.cost import (
    PEAKS,
    PROMPT_TOKENS,
    TRAIN_UTILISATION,
    Accelerator,
    estimate,
    evaluation_flops,
    model_parameters,
    training_flops,
)
from antibody.cli.main import main
from antibody.config import compose
from antibody.config.schema import Stage
from antibody.models import load_tokenizer
from antibody.models.tiny import build_tiny_model

TINY_STUDY = str(Path(__file__).resolve().parents[1] / "conf" / "study" / "tiny.yaml")


def test_parameters_are_counted_without_weights_and_match_a_built_model():
    cfg = compose(["experiment=tiny"])
    built = build_tiny_model(cfg.model.tiny, load_tokenizer(cfg.model))
    assert isinstance(built, LlamaForCausalLM)
    assert model_parameters(cfg) == sum(p.numel() for p in built.parameters())
    assert model_parameters(compose(["experiment=paper/llama2_gsm8k"])) == pytest.approx(6.738e9)


def test_training_and_evaluation_flops_equal_a_hand_count():
    cfg = compose(["experiment=paper/llama2_gsm8k", "method=antibody"])
    n, d = 6.738e9, cfg.data
    # Antibody's flat step: 4 forward+backward passes of an SFT step (bench.stats.EXPECTED)
    want = 6 * n * d.align_batch_size * d.max_length * 4.0 * 10
    assert training_flops(cfg, Stage.ALIGN, 10, n) == pytest.approx(want)
    # Antibody weighting: 1 F+B + a no-grad forward, counted 1/2 F+B for a LoRA (bench.stats)
    want = 6 * n * d.finetune_batch_size * d.max_length * 1.5 * 10
    assert training_flops(cfg, Stage.FINETUNE, 10, n) == pytest.approx(want)
    e = d.eval
    harmful = e.n_harmful + e.n_harmful_second
    gen = (2 * n * (harmful + e.n_benign + e.n_benign_edgy) * (PROMPT_TOKENS + cfg.eval.max_new_tokens)
           + 2 * n * e.n_task * (PROMPT_TOKENS + cfg.task.max_new_tokens))
    judge = 2 * 6.738e9 * harmful * (PROMPT_TOKENS + cfg.eval.max_new_tokens)  # beaver-dam
    assert evaluation_flops(cfg, n) == pytest.approx(gen + judge)


def test_hours_are_flops_over_the_stated_rate_and_done_jobs_cost_nothing_left():
    cfg = compose(["experiment=paper/llama2_gsm8k", "method=sft"])
    est = estimate([(cfg, Stage.ALIGN, False), (cfg, Stage.FINETUNE, True)], [(cfg, False)], Accelerator.A100)
    align = training_flops(cfg, Stage.ALIGN, cfg.method.align.max_steps, 6.738e9)
    assert est.flops["align"] == pytest.approx(align)
    assert est.hours["align"] == pytest.approx(align / (PEAKS[Accelerator.A100].flops * TRAIN_UTILISATION) / 3600)
    assert est.flops_left["finetune"] == 0 and est.flops["finetune"] > 0
    h100 = estimate([(cfg, Stage.ALIGN, False)], [], Accelerator.H100)
    assert h100.hours["align"] == pytest.approx(est.hours["align"] * 312 / 989.4)


def test_the_dry_run_prints_gpu_hours_and_refuses_bad_gpu_options(capsys):
    assert main(["study", TINY_STUDY, "--dry-run", "--gpu", "l40s"]) == 0
    out = capsys.readouterr().out
    assert "Counted cost on one l40s (362.1 TFLOP/s" in out and "GPU-hours align" in out
    assert main(["study", TINY_STUDY, "--dry-run", "--gpu", "v100"]) == 2
    assert "--gpu v100: allowed ['h100', 'a100', 'l40s', 'cpu']" in capsys.readouterr().err
    assert main(["study", TINY_STUDY, "--gpu", "h100"]) == 2
    assert "without --dry-run" in capsys.readouterr().err
