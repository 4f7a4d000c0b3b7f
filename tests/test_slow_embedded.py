"""End to end on the embedded SmolLM2 (CPU, minutes): `make test-slow`, not the default suite."""

from __future__ import annotations

import json

import pytest

from antibody.cli.main import main
from antibody.evaluation.judges import is_refusal
from tests.helpers import SMALL

pytestmark = pytest.mark.slow


def test_embedded_align_finetune_eval(tmp_path):
    out = [f"run.output_dir={tmp_path}", *SMALL]
    assert main(["align", *out, "run.name=al"]) == 0
    assert main(["finetune", *out, "run.name=ft", "run.init_from=latest"]) == 0
    assert main(["eval", f"run={tmp_path / 'ft'}"]) == 0
    metrics = json.loads((tmp_path / "ft" / "eval" / "metrics.json").read_text())["metrics"]
    # the refusal rate recounted from the written predictions with the keyword detector
    rows = [json.loads(line) for line in (tmp_path / "ft" / "eval" / "predictions" / "harmful.jsonl").open()]
    refused = sum(is_refusal(r["response"]) for r in rows)
    assert len(rows) == 8 and (metrics["harmful/refusal_rate"]["k"], metrics["harmful/refusal_rate"]["n"]) == (
        refused, 8
    )
    assert metrics["harmful/refusal_rate"]["value"] == pytest.approx(refused / 8)
    # Theorem 4.1 (kkt): lambda_t = max(0, xi - <g_s, g_a> / ||g_s||^2), from the logged cosine and norms
    al = json.loads((tmp_path / "al" / "metrics.json").read_text())
    assert al["steps"] == 2 and al["config"]["method"]["align"]["lambda_mode"] == "kkt"
    f, xi = al["final"], al["config"]["method"]["align"]["xi"]
    want = max(0.0, xi - f["align/cos_a_s"] * f["align/grad_norm_a"] / f["align/grad_norm_s"])
    assert f["align/lambda_t"] == pytest.approx(want, rel=1e-4)
