"""Answer extractors for accuracy tasks, keyed by `ExtractorKind`.

- LABEL (SST2, AGNews; docs/method.md ("Metrics")): normalise the response and take the label word that
  occurs first; exact match against the target label.
- NUMERIC (GSM8K, gsm_symbolic, arithmetic): the number after the last "The final
  answer is:" if present, else the last number in the response (docs/method.md; the
  form of the released gsm8k/pred_eval.py of Booster and Antibody); thousands commas, signs and decimals are
  handled and numbers compare by value ("1,000.50" == "1000.5").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Optional

from antibody.data.records import normalise_text


class ExtractorKind(StrEnum):
    LABEL = "label"
    NUMERIC = "numeric"


# A number not glued to a preceding word character or digit ("v2", "3-5" -> 3 and 5):
# thousands groups "1,234,567" or plain digits, optional decimals, optional sign.
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_FINAL_ANSWER = re.compile(r"the final answer is\s*:?", re.IGNORECASE)


def canonical_number(text: str) -> Optional[str]:
    """'1,000.50' -> '1000.5', '-0' -> '0', '7.' -> '7'; None when not a number."""
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    if value == 0:
        return "0"
    return format(value, "f")


def extract_number(response: str) -> Optional[str]:
    matches = list(_FINAL_ANSWER.finditer(response))
    if matches:
        found = _NUMBER.search(response, matches[-1].end())
        if found:
            return canonical_number(found.group())
    numbers = _NUMBER.findall(response)
    return canonical_number(numbers[-1]) if numbers else None


def extract_label(response: str, labels: Sequence[str]) -> Optional[str]:
    """The label (as written in `labels`) whose normalised form occurs first as whole words."""
    text = f" {normalise_text(response)} "
    best: Optional[tuple[int, str]] = None
    for label in labels:
        pos = text.find(f" {normalise_text(label)} ")
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, label)
    return best[1] if best else None


def numbers_match(extracted: Optional[str], target: str) -> bool:
    if extracted is None:
        return False
    gold = canonical_number(target)
    return gold is not None and canonical_number(extracted) == gold


def labels_match(extracted: Optional[str], target: str) -> bool:
    return extracted is not None and normalise_text(extracted) == normalise_text(target)


@dataclass(frozen=True)
class Extractor:
    extract: Callable[[str, Sequence[str]], Optional[str]]
    matches: Callable[[Optional[str], str], bool]


EXTRACTORS: dict[ExtractorKind, Extractor] = {
    ExtractorKind.LABEL: Extractor(extract_label, labels_match),
    ExtractorKind.NUMERIC: Extractor(lambda response, _labels: extract_number(response), numbers_match),
}
