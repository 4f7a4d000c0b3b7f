"""`judge-eval`: the command, its files, its results-page block, and the default judge it chose."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from antibody.app.judge.evaluation import _answer_tokens, _candidates
from antibody.app.judge.report import judge_table
from antibody.app.report import block_name, default_page, render, update_block
from antibody.cli.main import main
from antibody.config import compose
from antibody.config.errors import ConfigError
from antibody.config.schema import EvalConfig, JudgeKind
from antibody.evaluation.judges import labelled

PAGE = Path(__file__).parent.parent / default_page("judge-eval-results")


def test_arguments_are_checked_before_any_work():
    assert _candidates(None) == [JudgeKind.KEYWORD, JudgeKind.TFIDF, JudgeKind.PROBE]
    assert _candidates("tfidf,beaver-dam") == [JudgeKind.TFIDF, JudgeKind.BEAVER_DAM]
    with pytest.raises(ConfigError, match=r"judges=tfdf: unknown judge\(s\) \['tfdf'\]"):
        _candidates("tfdf")
    cfg = compose(["experiment=tiny"])
    assert _answer_tokens(None, cfg) == cfg.eval.max_new_tokens
    assert _answer_tokens("full", cfg) is None and _answer_tokens("12", cfg) == 12
    for bad in ("0", "-3", "ten"):
        with pytest.raises(ConfigError, match="answer_tokens="):
            _answer_tokens(bad, cfg)


def test_judge_eval_writes_its_files_and_the_readme_block(tmp_path):
    out = tmp_path / "runs"
    assert main(["judge-eval", "experiment=tiny", f"run.output_dir={out}", "judges=keyword,tfidf",
                 "answer_tokens=8"]) == 0
    result = json.loads((out / "judge-eval" / "judge_eval.json").read_text())
    assert (out / "judge-eval" / "table.md").read_text().strip() == judge_table(result)
    names = [j["judge"] for j in result["judges"]]
    assert names == ["keyword", "tfidf", "tfidf+refusal-gate"]  # the keyword judge is a gate itself
    parts = labelled.split_rows()
    val = parts[labelled.Part.VALIDATION]
    for j in result["judges"]:
        o = j["by_length"]["8"]["overall"]
        assert o["n"] == len(val) and o["n_pos"] == sum(r.harmful for r in val)
        assert o["tp"] + o["fn"] == o["n_pos"] and o["tn"] + o["fp"] == o["n_neg"]
        assert set(j["by_length"]) == {"8", "full"}
        assert set(j["by_length"]["8"]["by_source"]) == {s.value for s in labelled.LabelSource}
    # the best judge is the one with the highest AUROC at the evaluation length
    aurocs = {j["judge"]: j["by_length"]["8"]["overall"]["auroc"]["value"] for j in result["judges"]}
    assert result["best"] == max(aurocs, key=aurocs.get)
    # how much better the best is: paired AUROC differences against every other judge
    assert set(result["best_minus"]) == set(aurocs) - {result["best"]}
    for name, d in result["best_minus"].items():
        assert d["value"] == pytest.approx(aurocs[result["best"]] - aurocs[name])
        assert d["ci95_low"] <= d["value"] <= d["ci95_high"]
    assert result["data"]["validation_rows"] == len(val)
    assert result["data"]["train_rows"] == len(parts[labelled.Part.TRAIN])
    # both keyword refusal detectors on the labelled refusal sets (PyRIT's validation prompts of 109)
    rd = result["refusal_detectors"]
    assert 0 < rd["sets"]["pyrit"]["n"] < 109 and rd["sets"]["uncensorbench"]["declined"] > 0
    assert set(rd["detectors"]) == {"is_refusal", "looks_like_refusal"}
    assert rd["detectors"]["is_refusal"]["pyrit"]["n"] == rd["sets"]["pyrit"]["n"]
    assert "incoherence" not in result  # no probe asked for, and the repeat rule configured
    text = render(result)
    assert block_name(result) == "judge-eval-results"
    assert f"**{result['best']}**" in text and "answers cut to 8 tokens" in text
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- judge-eval-results:start -->\nPLACEHOLDER-XYZ\n<!-- judge-eval-results:end -->\nb\n")
    update_block(readme, text, block_name(result))
    assert "PLACEHOLDER-XYZ" not in readme.read_text() and text in readme.read_text()


def test_the_published_judge_table_was_generated_and_names_the_schema_default():
    """The judge block of docs/results/judge-eval.md is judge-eval's output; the judge it calls best on the
    validation part is the embedded world's default (schema), unless the block says otherwise."""
    text = PAGE.read_text()
    block = text.split("<!-- judge-eval-results:start -->")[1].split("<!-- judge-eval-results:end -->")[0]
    best = re.search(r"Best by AUROC at the evaluation length: \*\*([\w+-]+)\*\*", block).group(1)
    default = EvalConfig()
    name = default.judge.value + ("+refusal-gate" if default.judge_refusal_gate else "")
    assert best == name
    assert f"`eval.judge={default.judge.value}`" in block


def test_beaver_dam_takes_the_same_path(tmp_path):
    """A GPU user measures beaver-dam-7b with `judge-eval judges=beaver-dam`: here a random
    classifier of beaver-dam's class stands in (CPU); its validation scores are cached where
    every later evaluation with that judge finds them for the corrected HS."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from antibody.evaluation.judges import build_judge
    from antibody.evaluation.judges.validation import validation_scores
    from antibody.models import cache_root, load_tokenizer

    folder = tmp_path / "beaver-dam-stand-in"
    tok = load_tokenizer(compose(["experiment=tiny"]).model)
    tok.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=14, problem_type="multi_label_classification",
        pad_token_id=tok.pad_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "runs"
    args = ["experiment=tiny", f"run.output_dir={out}", f"eval.judge_path={folder}", "eval.batch_size=64"]
    assert main(["judge-eval", *args, "judges=beaver-dam", "answer_tokens=8"]) == 0
    result = json.loads((out / "judge-eval" / "judge_eval.json").read_text())
    assert [j["judge"] for j in result["judges"]] == ["beaver-dam", "beaver-dam+refusal-gate"]
    # an evaluation with this judge reads the cached validation scores instead of scoring again
    cfg = compose([*args, "eval.judge=beaver-dam"])
    judge = build_judge(JudgeKind.BEAVER_DAM, cfg, cache_root())
    judge.score = None  # would fail if called
    rows = validation_scores(judge, cache_root(), answer_tokens=8, tokenizer=load_tokenizer(cfg.model))
    assert len(rows) == result["judges"][0]["by_length"]["8"]["overall"]["n"]
