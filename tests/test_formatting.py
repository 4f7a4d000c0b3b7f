"""Prompt templates, label masking, truncation and batch collation."""

from __future__ import annotations

import pytest
import torch

from antibody.config.errors import DataError
from antibody.config.schema import PromptFormat
from antibody.data.collate import BATCH_KEYS, collate_rows, encode_records, pad_token_id_of
from antibody.data.formatting import encode_example, encode_pair, format_prompt
from antibody.data.records import Record
from tests.helpers import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    return build_tiny_tokenizer(add_bos=True)


def rec(instruction="How do I bake bread?", input="", response="Mix flour and water.", **kw) -> Record:
    return Record(
        uid=kw.pop("uid", "t-1"),
        source=kw.pop("source", "test"),
        instruction=instruction,
        input=input,
        response=response,
        refusal=kw.pop("refusal", "I can't help with that."),
        **kw,
    )


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# -- templates ---------------------------------------------------------------------


def test_alpaca_template_without_and_with_input(tok):
    assert format_prompt(rec(), tok, PromptFormat.ALPACA) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nHow do I bake bread?\n\n### Response:\n"
    )
    assert format_prompt(rec(input="Use rye."), tok, PromptFormat.ALPACA) == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nHow do I bake bread?\n\n### Input:\nUse rye.\n\n### Response:\n"
    )


def test_chat_template_uses_tokenizer_template_with_input_appended(tok):
    assert format_prompt(rec(), tok, PromptFormat.CHAT) == (
        "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_prompt(rec(input="Use rye."), tok, "chat") == (
        "<|im_start|>user\nHow do I bake bread?\n\nUse rye.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_without_template_is_an_error():
    bare = build_tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(DataError, match="data.prompt_format=chat"):
        format_prompt(rec(), bare, PromptFormat.CHAT)


# -- encoding ------------------------------------------------------------------------


def test_labels_mask_prompt_and_supervise_response_plus_eos(tok):
    prompt = format_prompt(rec(), tok, PromptFormat.ALPACA)
    out = encode_example(prompt, "Mix flour and water.", tok, max_length=512)
    p, r = ids(tok, prompt), ids(tok, "Mix flour and water.")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert out["input_ids"] == p + r + [eos]
    assert out["labels"] == [-100] * len(p) + r + [eos]
    assert tok.decode([t for t in out["labels"] if t != -100]) == "Mix flour and water.<|im_end|>"


def test_bos_is_added_once(bos_tok):
    bos = bos_tok.convert_tokens_to_ids("<s>")
    plain = encode_example("Question: hi\n", "hello", bos_tok, 64)
    assert plain["input_ids"][0] == bos and plain["input_ids"][1] != bos
    # a template that already writes the BOS into the text does not get a second one
    written = encode_example("<s>Question: hi\n", "hello", bos_tok, 64)
    assert written["input_ids"][0] == bos and written["input_ids"][1] != bos
    assert written["input_ids"] == plain["input_ids"]


def test_empty_response_is_eos_only(tok):
    out = encode_example("Say nothing.", "", tok, 32)
    assert [t for t in out["labels"] if t != -100] == [tok.eos_token_id]


def test_truncation_cuts_the_response_end_first(tok):
    prompt = format_prompt(rec(), tok, PromptFormat.ALPACA)
    response = "Mix flour and water, then knead and bake it. " * 20
    p, r = ids(tok, prompt), ids(tok, response)
    max_length = len(p) + 10
    enc = encode_pair(prompt, response, tok, max_length, min_response_tokens=5)
    assert enc.truncated and len(enc.input_ids) == max_length
    assert enc.input_ids == p + r[:10]  # whole prompt, response start, no EOS after a cut
    assert enc.labels == [-100] * len(p) + r[:10]
    assert (enc.prompt_tokens, enc.response_tokens) == (len(p), len(r))


def test_truncation_of_a_long_prompt_keeps_head_tail_and_some_response(tok):
    long_instruction = "Explain why the sky is blue. " * 60
    prompt = format_prompt(rec(instruction=long_instruction), tok, PromptFormat.ALPACA)
    p, r = ids(tok, prompt), ids(tok, "Mix flour and water.")
    max_length = 64
    enc = encode_pair(prompt, "Mix flour and water.", tok, max_length)
    assert len(enc.input_ids) == max_length
    kept_response = [t for t in enc.labels if t != -100]
    assert kept_response == (r + [tok.eos_token_id])[: len(kept_response)]
    assert len(kept_response) >= min(len(r) + 1, max_length // 4)
    n_prompt = max_length - len(kept_response)
    tail = min(16, n_prompt // 2)
    assert enc.input_ids[:n_prompt] == p[: n_prompt - tail] + p[len(p) - tail :]
    # the generation cue survives the cut
    assert tok.decode(enc.input_ids[:n_prompt]).endswith("### Response:\n")


def test_truncation_of_both_respects_min_response(tok):
    prompt = "Explain why the sky is blue. " * 60
    response = "I'm sorry, but I can't help with that. " * 30
    enc = encode_pair(prompt, response, tok, 40, min_response_tokens=12)
    assert len(enc.input_ids) == 40
    assert sum(t != -100 for t in enc.labels) == 12


def test_real_smollm2_tokenizer_chat_masking(tiny_cfg):
    from antibody.models import load_tokenizer

    smol = load_tokenizer(tiny_cfg.model)
    r = rec(instruction="Name a colour.", response="Blue.")
    prompt = format_prompt(r, smol, PromptFormat.CHAT)
    assert prompt.endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")
    out = encode_example(prompt, r.response, smol, 256)
    assert out["input_ids"][: len(ids(smol, prompt))] == ids(smol, prompt)
    assert smol.decode([t for t in out["labels"] if t != -100]) == "Blue.<|im_end|>"
    assert out["labels"][-1] == smol.eos_token_id == 2


# -- collation -----------------------------------------------------------------------


def test_collate_contract_shapes_and_padding(tok):
    records = [
        rec(
            uid="a",
            response="Yes.",
            refusal="No, sorry, I really cannot help with this one.",
            is_harmful=True,
        ),
        rec(
            uid="b",
            instruction="Explain why the sky is blue, briefly please.",
            response="Light scatters. " * 5,
        ),
        rec(uid="c", source="other", response="", refusal="No."),
    ]
    rows = encode_records(records, tok, PromptFormat.CHAT, 96)
    batch = collate_rows([rows[2], rows[0], rows[1]], pad_token_id_of(tok))
    assert list(batch) == list(BATCH_KEYS)
    order = [2, 0, 1]
    own = [rows[i].own for i in order]
    ref = [rows[i].refusal for i in order]
    assert batch["input_ids"].shape == (3, max(len(e.input_ids) for e in own))
    assert batch["refusal_input_ids"].shape == (3, max(len(e.input_ids) for e in ref))
    for view, encs in (("", own), ("refusal_", ref)):
        for i, e in enumerate(encs):
            n = len(e.input_ids)
            assert batch[f"{view}input_ids"][i, :n].tolist() == e.input_ids
            assert batch[f"{view}labels"][i, :n].tolist() == e.labels
            assert batch[f"{view}attention_mask"][i].tolist() == [1] * n + [0] * (
                batch[f"{view}input_ids"].shape[1] - n
            )
            assert (batch[f"{view}input_ids"][i, n:] == tok.pad_token_id).all()
            assert (batch[f"{view}labels"][i, n:] == -100).all()
    assert batch["is_harmful"].dtype == torch.bool and batch["is_harmful"].tolist() == [False, True, False]
    assert batch["index"].dtype == torch.long and batch["index"].tolist() == order
    assert batch["uid"] == ["c", "a", "b"] and batch["source"] == ["other", "test", "test"]
    for key in BATCH_KEYS[:6]:
        assert batch[key].dtype == torch.long
    # the refusal view has the same prompt as the own view
    for i in range(3):
        n_prompt = sum(1 for t in own[i].labels if t == -100)
        assert own[i].input_ids[:n_prompt] == ref[i].input_ids[:n_prompt]


def test_collate_empty_batch_is_an_error():
    with pytest.raises(DataError, match="empty batch"):
        collate_rows([], 0)
