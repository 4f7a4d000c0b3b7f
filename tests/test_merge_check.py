"""`merge-check`: the merge of an adapter into an nf4 base moves the model by about the
adapter's whole effect, into an fp32 base by rounding only; the figures match an
independent computation and land in a marked Markdown block."""

from __future__ import annotations

import json

import pytest
import torch

from antibody.app.merge_check import RESULTS_FILE
from antibody.cli.main import main
from antibody.config import compose
from antibody.config.compose import load_saved

pytest.importorskip("bitsandbytes")

BASE = ["experiment=tiny", "model.quantization=nf4", "method.align.max_steps=3", "method=sft"]


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["align", *BASE, f"run.output_dir={out}", "run.name=al"]) == 0
    return out / "al"


def _first_token_logits(model, tok, prompt: str) -> torch.Tensor:
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]


def test_merge_into_nf4_is_measured_against_an_independent_computation(aligned, capsys):
    assert main(["merge-check", f"run={aligned}", "n=4"]) == 0
    rows = json.loads((aligned / RESULTS_FILE).read_text())["rows"]
    assert [(r["quantization"], r["prompts"]) for r in rows] == [("nf4", 4)]
    nf4 = rows[0]
    assert "| al | tiny-llama nf4" in capsys.readouterr().out

    # independently: the adapter unmerged and merged on the first prompt
    from antibody.app.evaluate import eval_records
    from antibody.data.formatting import format_prompt
    from antibody.models import load_model, merge_adapter

    cfg = load_saved(aligned / "config.yaml")
    model, tok = load_model(cfg.model, adapter_path=aligned / "adapter")
    rec = eval_records(cfg, tok)["harmful"][0]
    prompt = format_prompt(rec, tok, cfg.data.prompt_format)
    unmerged = _first_token_logits(model.eval(), tok, prompt)
    merged = _first_token_logits(merge_adapter(model).eval(), tok, prompt)
    assert nf4["logit_max_abs_change"] >= float((merged - unmerged).abs().max()) > 0
    assert nf4["logit_change_over_effect"] > 0.3  # the requantised merge loses much of the adapter

    # the same adapter on an fp32 base merges exactly: a second row, rounding only
    assert main(["merge-check", f"run={aligned}", "n=4", "model.quantization=none"]) == 0
    rows = json.loads((aligned / RESULTS_FILE).read_text())["rows"]
    fp32 = next(r for r in rows if r["quantization"] == "none")
    assert len(rows) == 2 and fp32["logit_change_over_effect"] < 1e-4 and fp32["answers_changed"] == 0
    assert fp32["top1_agreement"] == 1.0
    # a rerun on the same base replaces its row
    assert main(["merge-check", f"run={aligned}", "n=2", "model.quantization=none"]) == 0
    rows = json.loads((aligned / RESULTS_FILE).read_text())["rows"]
    assert sorted((r["quantization"], r["prompts"]) for r in rows) == [("nf4", 4), ("none", 2)]


def test_merge_check_report_fills_its_block_and_bad_input_is_refused(aligned, tmp_path, capsys):
    if not (aligned / RESULTS_FILE).is_file():
        assert main(["merge-check", f"run={aligned}", "n=2"]) == 0
    page = tmp_path / "README.md"  # any page with the block
    page.write_text("# x\n<!-- merge-check-results:start -->\nold\n<!-- merge-check-results:end -->\n")
    assert main(["report", str(aligned / RESULTS_FILE), str(page)]) == 0
    text = page.read_text()
    assert "old" not in text and "| al | tiny-llama nf4 (float32) |" in text
    assert main(["merge-check", f"run={aligned}", "n=0"]) == 2
    assert "n=0" in capsys.readouterr().err
    assert main(["merge-check", f"run={tmp_path}"]) == 2
    assert "not a finished run" in capsys.readouterr().err
    stacked = tmp_path / "ft"  # a fine-tuning run over a stacked alignment adapter
    (stacked / "adapter").mkdir(parents=True)
    (stacked / "config.yaml").write_text((aligned / "config.yaml").read_text())
    (stacked / "base_adapters.json").write_text(json.dumps([str(aligned / "adapter")]))
    assert main(["merge-check", f"run={stacked}"]) == 2
    assert "sits on other adapters" in capsys.readouterr().err
    assert compose(BASE).model.quantization.value == "nf4"
