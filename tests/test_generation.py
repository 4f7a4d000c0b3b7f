"""Batched left-padded greedy generation equals one-prompt-at-a-time greedy decoding."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from antibody.config import compose
from antibody.config.schema import PromptFormat
from antibody.data.formatting import format_prompt
from antibody.data.records import Record
from antibody.evaluation.generation import generate, make_text_generator
from antibody.models import load_tokenizer

PROMPTS = [
    "Hi",
    "Write a short poem about the sea and the wind over the harbour at night.",
    "What is 2 + 2?",
    "List three fruits.",
    "Explain in detail why the sky looks blue during the day but red at sunset, step by step.",
]
MAX_NEW = 6


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(compose(["experiment=tiny"]).model)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    # initializer_range 0.2 (default 0.02): larger logit gaps, so fp32 summation-order noise
    # between padded and unpadded shapes (~1e-6) cannot flip an argmax.
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    return LlamaForCausalLM(config).eval()


def manual_greedy(model, tokenizer, prompt: str, max_new: int) -> tuple[str, float]:
    """Independent reference: plain forward passes and argmax, no padding, no generate().
    Also returns the smallest top-1/top-2 logit gap met (how robust the argmaxes are)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    min_gap = float("inf")
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            top = torch.topk(logits, 2).values
            min_gap = min(min_gap, float(top[0] - top[1]))
            nxt = int(logits.argmax())
            if nxt == tokenizer.eos_token_id:
                break
            new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True), min_gap


def test_batched_equals_one_at_a_time(model, tokenizer):
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    reference = []
    for p in PROMPTS:
        text, gap = manual_greedy(model, tokenizer, p, MAX_NEW)
        assert gap > 1e-3  # the comparison below is about padding, not float noise
        reference.append(text)
    single = [generate(model, tokenizer, [p], max_new_tokens=MAX_NEW, batch_size=1)[0] for p in PROMPTS]
    seen = []
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, batch_size=2,
                       progress=lambda done, total: seen.append((done, total)))
    assert single == reference
    assert batched == reference
    assert any(reference)  # the model does write something
    assert seen == [(2, 5), (4, 5), (5, 5)]
    # the tokenizer is left as it was
    assert (tokenizer.padding_side, tokenizer.pad_token) == (side, pad)


def test_deterministic_and_restores_state(model, tokenizer):
    model.train()
    a = generate(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=5)
    assert model.training  # training mode restored
    model.eval()
    assert a == generate(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=3)
    assert generate(model, tokenizer, [], max_new_tokens=4, batch_size=3) == []


def test_tokenizer_without_pad_token(model, tokenizer):
    pad = tokenizer.pad_token
    expected = generate(model, tokenizer, PROMPTS[:3], max_new_tokens=4, batch_size=3)
    tokenizer.pad_token = None
    try:
        assert generate(model, tokenizer, PROMPTS[:3], max_new_tokens=4, batch_size=3) == expected
        assert tokenizer.pad_token is None  # eos served as pad only during generation
    finally:
        tokenizer.pad_token = pad


def test_text_generator_formats_with_chat_template(model, tokenizer):
    answer = make_text_generator(model, tokenizer, PromptFormat.CHAT, max_new_tokens=5, batch_size=2)
    instructions = PROMPTS[:3]
    formatted = [format_prompt(Record(uid=str(i), source="t", instruction=t), tokenizer, PromptFormat.CHAT)
                 for i, t in enumerate(instructions)]
    assert all("<|im_start|>assistant" in f for f in formatted)
    expected = [manual_greedy(model, tokenizer, f, 5)[0] for f in formatted]
    assert answer(instructions) == expected


def test_rejects_bad_sizes(model, tokenizer):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tokenizer, ["x"], max_new_tokens=0, batch_size=1)


def test_weights_cast_once_for_bf16_inference_give_what_autocast_gives(tokenizer):
    """models.precision.cast_for_inference stores the linear weights in bf16 once: under
    autocast the logits and greedy answers are bit-identical to plain autocast (which casts
    the fp32 weights at every pass), the tied embedding stays fp32, and fp32 runs are
    untouched."""
    import copy

    from antibody.models import load_model
    from antibody.models.precision import cast_for_inference, inference_autocast

    cfg = compose(["experiment=tiny"]).model
    torch.manual_seed(0)
    lora, _ = load_model(cfg)  # a LoRA model, as an evaluation loads one
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    lora.eval()
    cast = cast_for_inference(copy.deepcopy(lora), "bf16-mixed")
    assert cast_for_inference(lora, "32-true") is lora
    assert all(p.dtype == torch.float32 for p in lora.parameters())
    dtypes = {n: p.dtype for n, p in cast.named_parameters()}
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if "lora_A" in n)
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if "q_proj.base_layer" in n)
    ids = torch.tensor([tokenizer("Tell me a story about a cat", add_special_tokens=False)["input_ids"]])
    with torch.no_grad(), inference_autocast("bf16-mixed", lora):
        want = lora(input_ids=ids).logits
        got = cast(input_ids=ids).logits
        answers = [generate(m, tokenizer, PROMPTS, max_new_tokens=MAX_NEW, batch_size=2) for m in (lora, cast)]
    assert want.dtype == torch.bfloat16 and torch.equal(got, want)
    assert answers[0] == answers[1]
