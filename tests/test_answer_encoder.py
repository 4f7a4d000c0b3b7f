"""AnswerEncoder: batched pooled answer states and answer NLL equal unpadded row-by-row ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from antibody.config import compose
from antibody.data.formatting import format_prompt
from antibody.data.records import Record
from antibody.evaluation.judges.encoder import AnswerEncoder, EncodedAnswers
from antibody.models import load_model

MAX_PROMPT, MAX_ANSWER = 48, 12
LONG = " ".join(f"word{i}" for i in range(60))  # well over both limits
PROMPTS = ["Hi", "How do I bake a cake? " + LONG, "Tell me a story.", "Why?"]
ANSWERS = ["Sure, here is how.", "Mix flour and eggs.", "Once upon a time " + LONG, "Because."]


@pytest.fixture(scope="module")
def setup():
    cfg = compose(["experiment=tiny"])
    model, tok = load_model(cfg.model, with_lora=False)
    return model, tok, cfg.data.prompt_format


def _encoder(setup, batch_size=3) -> AnswerEncoder:
    model, tok, fmt = setup
    return AnswerEncoder(model, tok, prompt_format=fmt, max_prompt_tokens=MAX_PROMPT,
                         max_answer_tokens=MAX_ANSWER, batch_size=batch_size)


def _reference(enc: AnswerEncoder, prompt: str, answer: str):
    """One unpadded row: hidden states averaged over the answer, explicit cross-entropy."""
    p, a = enc.prompt_ids(prompt), enc.answer_ids(answer)
    with torch.inference_mode():
        out = enc.model(input_ids=torch.tensor([p + a]), output_hidden_states=True)
    pooled = torch.stack([h[0, len(p):].float().mean(0) for h in out.hidden_states])
    nll = F.cross_entropy(out.logits[0, len(p) - 1 : -1].float(), torch.tensor(a)).item()
    return pooled.numpy(), nll, len(p), len(a)


def test_batched_equals_row_by_row(setup):
    model, tok, fmt = setup
    enc = _encoder(setup)
    got = enc.encode(PROMPTS, ANSWERS)
    assert isinstance(got, EncodedAnswers)
    n_layers = model.config.num_hidden_layers + 1
    assert got.pooled.shape == (len(PROMPTS), n_layers, model.config.hidden_size)
    assert got.pooled.dtype == np.float32 and got.nll.dtype == np.float64 and got.answer_tokens.dtype == np.int64
    lengths = []
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        pooled, nll, n_prompt, n_answer = _reference(enc, prompt, answer)
        lengths.append((n_prompt, n_answer))
        np.testing.assert_allclose(got.pooled[i], pooled, atol=1e-5, rtol=1e-5)
        assert got.nll[i] == pytest.approx(nll, abs=1e-5)
        assert got.answer_tokens[i] == n_answer
    # the truncations were exercised, and rows of very different lengths shared a batch
    assert max(n for n, _ in lengths) == MAX_PROMPT and max(a for _, a in lengths) == MAX_ANSWER
    assert min(n + a for n, a in lengths) < MAX_PROMPT
    # a truncated prompt keeps its end: the generation cue the answer follows
    full = tok(format_prompt(Record(uid="u", source="judge", instruction=PROMPTS[1]), tok, fmt),
               add_special_tokens=False)["input_ids"]
    assert enc.prompt_ids(PROMPTS[1])[-8:] == full[-8:]
    # batch size does not change the result; order follows the input
    one = _encoder(setup, batch_size=1).encode(PROMPTS, ANSWERS)
    np.testing.assert_allclose(one.pooled, got.pooled, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(one.nll, got.nll, atol=1e-5)
    rev = enc.encode(PROMPTS[::-1], ANSWERS[::-1])
    np.testing.assert_allclose(rev.pooled[::-1], got.pooled, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(rev.answer_tokens[::-1], got.answer_tokens)
    # a model without `logits_to_keep` (full logits) gives the same numbers
    enc._logits_to_keep = False
    full_logits = enc.encode(PROMPTS, ANSWERS)
    np.testing.assert_allclose(full_logits.pooled, got.pooled, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(full_logits.nll, got.nll, atol=1e-5)


def test_empty_answer_uses_last_prompt_token(setup):
    enc = _encoder(setup)
    got = enc.encode(["Hi", "Tell me a story."], ["", "Once."])
    p = enc.prompt_ids("Hi")
    with torch.inference_mode():
        out = enc.model(input_ids=torch.tensor([p]), output_hidden_states=True)
    last = torch.stack([h[0, -1].float() for h in out.hidden_states]).numpy()
    np.testing.assert_allclose(got.pooled[0], last, atol=1e-5, rtol=1e-5)
    assert math.isnan(got.nll[0]) and got.answer_tokens[0] == 0
    assert np.isfinite(got.nll[1]) and got.answer_tokens[1] > 0
    empty = enc.encode([], [])
    assert empty.pooled.shape == (0, *got.pooled.shape[1:]) and empty.nll.shape == (0,)


def test_mismatched_lengths_raise(setup):
    with pytest.raises(ValueError):
        _encoder(setup).encode(["a", "b"], ["x"])


@pytest.mark.parametrize("k", [0, 1, 3, 7, 200])
def test_cut_answer_round_trip(setup, k):
    enc = _encoder(setup)
    tok = enc.tokenizer
    for answer in ANSWERS + ["Ünïcödé — naïve café, déjà vu 🎉 ok", ""]:
        cut = enc.cut_answer(answer, k)
        n_full = len(tok(answer, add_special_tokens=False)["input_ids"]) if answer else 0
        n_cut = len(tok(cut, add_special_tokens=False)["input_ids"]) if cut else 0
        assert n_cut <= min(k, n_full)
        assert n_cut >= min(k, n_full) - 1  # at most one token is given up at a split word
        assert answer.startswith(cut.rstrip())
    assert enc.cut_answer("Mix flour and eggs.", 200) == "Mix flour and eggs."
