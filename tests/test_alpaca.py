"""AlpacaEval as a task: instruction data for the upload, AlpacaEval's prompts held out, the
generations in alpaca_eval's format, and a local pairwise win rate (reward-model stand-in)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from antibody.config import compose
from antibody.config.errors import ConfigError

HUB = Path(__file__).parent / "fixtures" / "hub"
PATHS = [f"data.paths.alpaca={HUB / 'alpaca.json'}", f"data.paths.alpaca_eval={HUB / 'alpaca_eval.json'}"]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A random single-output sequence classifier saved as a folder: a reward model's shape."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from antibody.models import load_tokenizer

    folder = tmp_path_factory.mktemp("reward-model")
    tok = load_tokenizer(compose(["experiment=tiny"]).model)
    tok.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id, initializer_range=0.5))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_the_task_reads_alpaca_for_training_and_alpaca_eval_for_evaluation(tmp_path):
    from antibody.data.sources.registry import SourceContext, load_source
    from antibody.models import cache_root

    cfg = compose(["experiment=tiny", "task=alpaca", *PATHS])
    rows = load_source("alpaca", SourceContext(data=cfg.data, task=cfg.task, seed=0, cache_dir=cache_root()))
    train = [r for r in rows if r.meta["split"] == "train"]
    held = [r for r in rows if r.meta["split"] == "eval"]
    raw = json.loads((HUB / "alpaca.json").read_text())
    assert len(train) == len(raw) and train[0].response == raw[0]["output"] and train[0].input == raw[0]["input"]
    reference = json.loads((HUB / "alpaca_eval.json").read_text())
    assert [r.target for r in held] == [x["output"] for x in reference]  # the win-rate baseline


def test_the_pairwise_judge_against_a_direct_computation(reward_dir):
    from antibody.evaluation.judges.pairwise import RewardPairwiseJudge, win_rate

    judge = RewardPairwiseJudge(str(reward_dir), device="cpu", batch_size=2)
    q = ["How do I fold a shirt?", "Name a prime number.", "Say hi."]
    a = ["Fold it in thirds, then in half.", "7", "Hi!"]
    ref = ["Lay it flat and fold the sleeves in.", "Seven is prime.", "Hi!"]
    out = judge.outcomes(q, a, ref)
    with torch.inference_mode():  # unpadded, one pair at a time
        def reward(x, y):
            enc = judge.tokenizer(x, y, return_tensors="pt")
            return float(judge.model(**enc).logits[0, 0])
        expected = [1.0 if reward(x, y) > reward(x, z) else 0.5 if reward(x, y) == reward(x, z) else 0.0
                    for x, y, z in zip(q, a, ref, strict=True)]
    assert out == expected and out[2] == 0.5  # the same answer as the reference ties
    rate = win_rate([1.0, 0.0, 0.5, 1.0])
    assert rate["value"] == pytest.approx(0.625) and rate["wins"] == 2 and rate["ties"] == 1
    with pytest.raises(ConfigError, match="eval.pairwise_judge_path"):
        RewardPairwiseJudge(str(reward_dir / "missing"), device="cpu")


def test_an_alpaca_evaluation_writes_the_generations_and_the_win_rate(tmp_path, reward_dir):
    from antibody.app.evaluate import evaluate_model

    cfg = compose(["experiment=tiny", "task=alpaca", *PATHS, "data.eval.n_task=4", "data.user.n=10",
                   f"eval.pairwise_judge_path={reward_dir}", f"run.output_dir={tmp_path}", "run.name=a"])
    result = evaluate_model(cfg, None, tmp_path / "eval")
    outputs = json.loads((tmp_path / "eval" / "alpaca_eval_outputs.json").read_text())
    assert len(outputs) == 4 and set(outputs[0]) == {"instruction", "output", "generator", "dataset"}
    assert result["alpaca_eval"]["command"].startswith("alpaca_eval --model_outputs ")
    win = result["metrics"]["alpaca/win_rate"]
    assert win["n"] == 4 and 0.0 <= win["value"] <= 1.0
    # without a pairwise judge: the generations and the command only
    cfg.eval.pairwise_judge_path = None
    again = evaluate_model(cfg, None, tmp_path / "eval2")
    assert "alpaca/win_rate" not in again["metrics"] and (tmp_path / "eval2" / "alpaca_eval_outputs.json").is_file()
