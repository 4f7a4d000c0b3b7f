"""Prompt templates and the tokenisation of one (prompt, response) pair for SFT.

Two prompt formats (a registry keyed by `PromptFormat`):
- ALPACA: the template of the paper and of the released Booster/Antibody scripts (the
  Stanford Alpaca `PROMPT_DICT`), with and without an input field.
- CHAT: the tokenizer's own chat template, one user turn, generation prompt added.

Tokenisation choices (`encode_pair`), and why:
- The prompt and the response are tokenised SEPARATELY and concatenated. The prompt ids
  are then exactly the ids the model sees when it answers the same prompt at evaluation
  (`format_prompt` + tokenizer), and the label boundary is exact. (Tokenising the joined
  text and masking by the prompt's length can shift the boundary by a token when BPE
  merges across it.)
- The loss is on the response tokens and one EOS (released scripts; docs/method.md); every
  prompt token is -100.
- Truncation to `max_length` (ours): the response is cut first, from its END, but keeps at
  least `min_response_tokens` (default a quarter of max_length): the start of the answer
  is what both stages are about (refuse vs comply), and a cut response keeps no EOS,
  because the model must not learn to stop mid-sentence. If the prompt alone is still
  too long, its MIDDLE is dropped: the head holds the template header and the start of
  the instruction, the tail holds the generation cue ("### Response:" / the assistant
  header) after which the model must answer, and both must survive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from antibody.config.errors import DataError
from antibody.config.schema import PromptFormat
from antibody.data.records import Record

IGNORE_INDEX = -100  # label value the causal-LM loss skips (PyTorch CrossEntropyLoss default)

# Stanford Alpaca PROMPT_DICT, used verbatim by the Booster and Antibody scripts (docs/method.md).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)

# Prompt tokens always kept at the end of a truncated prompt: enough for the generation
# cue of both formats ("\n\n### Response:\n" and ChatML's "<|im_end|>\n<|im_start|>assistant\n"
# are 5-8 tokens for the tokenizers we use). Ours.
PROMPT_TAIL_TOKENS = 16


def user_message(record: Record) -> str:
    """The user's turn for chat formats: the instruction, then the input if any."""
    if record.input:
        return f"{record.instruction}\n\n{record.input}"
    return record.instruction


def _format_alpaca(record: Record, tokenizer) -> str:
    if record.input:
        return ALPACA_WITH_INPUT.format(instruction=record.instruction, input=record.input)
    return ALPACA_NO_INPUT.format(instruction=record.instruction)


def _format_chat(record: Record, tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.prompt_format=chat but the tokenizer has no chat template; "
            "set data.prompt_format=alpaca or use a tokenizer that ships one"
        )
    # earlier turns of an uploaded conversation (data/upload.py), if any, come first
    messages = [*record.meta.get("context", ()), {"role": "user", "content": user_message(record)}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


PROMPT_FORMATTERS: dict[PromptFormat, Callable[[Record, object], str]] = {
    PromptFormat.ALPACA: _format_alpaca,
    PromptFormat.CHAT: _format_chat,
}


def format_prompt(record: Record, tokenizer, fmt: PromptFormat) -> str:
    """The text the model is conditioned on (training) or answers (evaluation)."""
    return PROMPT_FORMATTERS[PromptFormat(fmt)](record, tokenizer)


@dataclass(frozen=True)
class Encoded:
    """One tokenised example; the lengths are BEFORE truncation (for summaries)."""

    input_ids: list[int]
    labels: list[int]
    prompt_tokens: int
    response_tokens: int  # without the EOS
    truncated: bool


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text by itself (a BOS for Llama-2, none for ChatML
    models). Chat templates usually write the BOS into the text already, so it is added only
    where the prompt does not start with it (never twice)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def eos_id(tokenizer) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos_token_id; the SFT target needs one (response + EOS)")
    return int(eos)


def _truncate_middle(ids: list[int], budget: int) -> list[int]:
    tail = min(PROMPT_TAIL_TOKENS, budget // 2)
    head = budget - tail
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def encode_pair(
    prompt_text: str,
    response: str,
    tokenizer,
    max_length: int,
    *,
    min_response_tokens: Optional[int] = None,
    prefix: Optional[list[int]] = None,
) -> Encoded:
    """Tokenise prompt and response, mask the prompt, truncate as the module docstring says."""
    if max_length < 2:
        raise DataError(
            f"data.max_length={max_length} is too small: need room for a prompt and a response token"
        )
    if prefix is None:
        prefix = special_prefix(tokenizer)
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    if prefix and prompt_ids[: len(prefix)] != prefix:
        prompt_ids = prefix + prompt_ids
    response_ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []
    target = response_ids + [eos_id(tokenizer)]
    n_prompt, n_response = len(prompt_ids), len(response_ids)

    truncated = n_prompt + len(target) > max_length
    if truncated:
        floor = min_response_tokens if min_response_tokens is not None else max(1, max_length // 4)
        floor = max(1, min(floor, max_length - 1))
        keep = min(len(target), max(max_length - n_prompt, floor))
        target = target[:keep]
        budget = max_length - keep
        if n_prompt > budget:
            prompt_ids = _truncate_middle(prompt_ids, budget)
    return Encoded(
        input_ids=prompt_ids + target,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target,
        prompt_tokens=n_prompt,
        response_tokens=n_response,
        truncated=truncated,
    )


def encode_example(prompt_text: str, response: str, tokenizer, max_length: int) -> dict:
    """`{"input_ids", "labels"}` (lists of ints): labels -100 on the prompt, loss on
    response + EOS; see the module docstring for truncation."""
    enc = encode_pair(prompt_text, response, tokenizer, max_length)
    return {"input_ids": enc.input_ids, "labels": enc.labels}
