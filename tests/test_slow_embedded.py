"""End to end on the embedded SmolLM2 (CPU, minutes): `make test-slow`, not the default suite."""

from __future__ import annotations

import json

import pytest

from antibody.cli.main import main

pytestmark = pytest.mark.slow

SMALL = [
    "data.alignment.n_harmful=16",
    "data.alignment.n_harmful_answers=16",
    "data.user.n=16",
    "data.eval.n_harmful=8",
    "data.eval.n_benign=8",
    "data.eval.n_task=8",
    "data.generation_max_new_tokens=32",
    "method.align.max_steps=2",
    "method.finetune.max_steps=2",
    "eval.max_new_tokens=16",
    "trainer.progress_bar=false",
]


def test_embedded_align_finetune_eval(tmp_path):
    out = [f"run.output_dir={tmp_path}", *SMALL]
    assert main(["align", *out, "run.name=al"]) == 0
    assert main(["finetune", *out, "run.name=ft", "run.init_from=latest"]) == 0
    assert main(["eval", f"run={tmp_path / 'ft'}"]) == 0
    metrics = json.loads((tmp_path / "ft" / "eval" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["harmful/refusal_rate"]["value"] <= 1.0
    assert json.loads((tmp_path / "al" / "metrics.json").read_text())["final"]["align/lambda_t"] >= 0
