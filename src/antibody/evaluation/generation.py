"""Batched greedy generation with left padding; equals generating one prompt at a time.

Prompts are already formatted strings. Left padding keeps every prompt's last token at
the same position so new tokens append correctly; transformers derives position ids
from the attention mask, so a padded prompt sees the same positions as alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

import torch

from antibody.config.schema import PromptFormat
from antibody.data.formatting import format_prompt, special_prefix
from antibody.data.records import Record, make_uid

Progress = Callable[[int, int], None]  # (prompts done, total)


@contextmanager
def left_padding(tokenizer) -> Iterator[None]:
    """Temporarily pad on the left, with eos as pad when the tokenizer has none."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; cannot pad a batch")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def _encode(tokenizer, prompt: str, prefix: list[int]) -> list[int]:
    """The prompt ids exactly as training builds them (`antibody.data.formatting.encode_pair`):
    the tokenizer's own prefix (a BOS for Llama-2) unless the text already starts with it."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if prefix and ids[: len(prefix)] != prefix:
        ids = prefix + ids
    return ids


def _stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos (what training appends to responses) plus any eos ids the
    model's generation config declares (e.g. several end-of-turn tokens)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else configured if isinstance(configured, list) else [configured]
    ids += [i for i in configured if i not in ids]
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an eos token")
    return ids


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int,
             progress: Optional[Progress] = None) -> list[str]:
    """Greedy continuation of each prompt (new text only, special tokens skipped)."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} and batch_size={batch_size} must be >= 1")
    if not prompts:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[Optional[str]] = [None] * len(prompts)
    try:
        with left_padding(tokenizer), torch.inference_mode():
            prefix = special_prefix(tokenizer)
            encoded = [_encode(tokenizer, p, prefix) for p in prompts]
            # Longest first: similar lengths share a batch, so little padding is computed.
            order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
            pad_id = tokenizer.pad_token_id
            eos_id = _stop_ids(model, tokenizer)
            done = 0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(encoded[i])
                    ids[row, width - n:] = torch.tensor(encoded[i], dtype=torch.long)
                    mask[row, width - n:] = 1
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device),
                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    temperature=None, top_p=None, top_k=None,
                    pad_token_id=pad_id, eos_token_id=eos_id,
                )
                new = out[:, width:].cpu()
                for row, i in enumerate(idx):
                    outputs[i] = tokenizer.decode(new[row], skip_special_tokens=True)
                done += len(idx)
                if progress is not None:
                    progress(done, len(prompts))
    finally:
        model.train(was_training)
    return [o if o is not None else "" for o in outputs]


def make_text_generator(model, tokenizer, fmt: PromptFormat, max_new_tokens: int,
                        batch_size: int) -> Callable[[list[str]], list[str]]:
    """Callable that formats raw instructions (chat template or Alpaca, as in training)
    and answers them greedily; used by data sources that the model writes."""
    fmt = PromptFormat(fmt)

    def answer(instructions: list[str]) -> list[str]:
        prompts = [format_prompt(Record(uid=make_uid("generated", text), source="generated",
                                        instruction=text), tokenizer, fmt)
                   for text in instructions]
        return generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)

    return answer
