"""Helpers shared by the loaders: building Records with their refusal view."""

from __future__ import annotations

from typing import Optional

from antibody.config.schema import SourceName
from antibody.data.records import Record, make_uid
from antibody.data.sources.refusals import refusal_for


def new_record(
    source: SourceName,
    instruction: str,
    *,
    input: str = "",
    response: str = "",
    is_harmful: bool,
    category: str = "",
    target: Optional[str] = None,
    meta: Optional[dict] = None,
    uid_parts: tuple = (),
) -> Record:
    """A Record whose uid hashes its content and whose refusal view is refusal_for(uid).

    `uid_parts` defaults to (instruction, input, response): the identifying content.
    Loaders add a split name where the same text may appear in two splits.
    """
    parts = uid_parts or (instruction, input, response)
    uid = make_uid(source.value, *parts)
    return Record(
        uid=uid,
        source=source.value,
        instruction=instruction,
        input=input,
        response=response,
        refusal=refusal_for(uid),
        is_harmful=is_harmful,
        category=category,
        target=target,
        meta=dict(meta or {}),
    )


def dedupe(records: list[Record]) -> list[Record]:
    """Drop exact repeats (same uid, i.e. same content), keeping the first occurrence.

    The asset files hold a few verbatim duplicates (e.g. one Do-Not-Answer prompt appears
    twice in a row); a repeated row adds no information and would break uid uniqueness.
    """
    seen: set[str] = set()
    out = []
    for rec in records:
        if rec.uid not in seen:
            seen.add(rec.uid)
            out.append(rec)
    return out


def clean(text: object) -> str:
    """Text field as a stripped string with \n line ends (hub rows may hold None).

    Some PyRIT CSV cells hold Windows line ends inside quoted fields; left as is, "\r"
    would reach the tokenizer and make equal texts compare unequal.
    """
    if text is None:
        return ""
    return str(text).replace("\r\n", "\n").replace("\r", "\n").strip()
