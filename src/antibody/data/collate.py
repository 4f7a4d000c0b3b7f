"""Encoding of Record lists into two views per row, and the collation of training batches.

Batch contract (every training batch; the Lightning modules rely on exactly these keys):

    input_ids, attention_mask, labels            LongTensor[B, L]   own response view
    refusal_input_ids, refusal_attention_mask,   LongTensor[B, L']  refusal view (same
    refusal_labels                                                  prompt, record.refusal)
    is_harmful BoolTensor[B]; index LongTensor[B] (row index within its split);
    uid list[str]; source list[str]

Both views are right-padded to their own batch maximum (pad id / attention 0 / label
-100): the refusal view is usually much shorter than a task answer, and padding it to
the other view's length would waste the extra no-grad forward of the weighted stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from antibody.config.errors import DataError
from antibody.config.schema import PromptFormat
from antibody.data.formatting import IGNORE_INDEX, Encoded, encode_pair, format_prompt, special_prefix
from antibody.data.records import Record

BATCH_KEYS = (
    "input_ids",
    "attention_mask",
    "labels",
    "refusal_input_ids",
    "refusal_attention_mask",
    "refusal_labels",
    "is_harmful",
    "index",
    "uid",
    "source",
)


@dataclass(frozen=True)
class EncodedRow:
    """A split's row, tokenised once: its own response view and its refusal view."""

    index: int
    uid: str
    source: str
    is_harmful: bool
    own: Encoded
    refusal: Encoded


def pad_token_id_of(tokenizer) -> int:
    """Pad id: the tokenizer's, else EOS (SmolLM2 and Llama use eos as pad), else 0. The
    value never matters for the loss (attention 0, label -100) but must be a valid id."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def encode_records(
    records: Sequence[Record], tokenizer, fmt: PromptFormat, max_length: int
) -> list[EncodedRow]:
    """Tokenise every row of a split (both views) once; batches index into the result."""
    prefix = special_prefix(tokenizer)
    rows = []
    for i, rec in enumerate(records):
        prompt = format_prompt(rec, tokenizer, fmt)
        own = encode_pair(prompt, rec.response, tokenizer, max_length, prefix=prefix)
        refusal = encode_pair(prompt, rec.refusal, tokenizer, max_length, prefix=prefix)
        rows.append(EncodedRow(i, rec.uid, rec.source, bool(rec.is_harmful), own, refusal))
    return rows


def pad_right(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _view(encs: Sequence[Encoded], pad_id: int, prefix: str) -> dict[str, torch.Tensor]:
    ids = pad_right([e.input_ids for e in encs], pad_id)
    mask = pad_right([[1] * len(e.input_ids) for e in encs], 0)
    labels = pad_right([e.labels for e in encs], IGNORE_INDEX)
    return {f"{prefix}input_ids": ids, f"{prefix}attention_mask": mask, f"{prefix}labels": labels}


def collate_rows(rows: Sequence[EncodedRow], pad_token_id: int) -> dict:
    """One batch in the contract above."""
    if not rows:
        raise DataError("cannot collate an empty batch")
    batch: dict = {}
    batch.update(_view([r.own for r in rows], pad_token_id, ""))
    batch.update(_view([r.refusal for r in rows], pad_token_id, "refusal_"))
    batch["is_harmful"] = torch.tensor([r.is_harmful for r in rows], dtype=torch.bool)
    batch["index"] = torch.tensor([r.index for r in rows], dtype=torch.long)
    batch["uid"] = [r.uid for r in rows]
    batch["source"] = [r.source for r in rows]
    return batch


class BatchCollator:
    """`collate_fn` for map-style loaders over EncodedRow lists (picklable for workers)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: Sequence[EncodedRow]) -> dict:
        return collate_rows(rows, self.pad_token_id)
