"""The one record type every data row uses, across every source and split."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class Record:
    """One (prompt, response) row.

    `response` is what the row teaches (a refusal for alignment rows, the harmful answer
    for D_harm and harmful upload rows, the task answer for benign rows). `refusal` is
    the row's refusal view: the same prompt with a refusal sentence (assigned
    deterministically from the project's list) used by the weighted fine-tuning stage
    and as y_r for the flatness refusal term. `is_harmful` tags the prompt's intent and
    travels with the row for logging and analysis only.
    """

    uid: str
    source: str
    instruction: str
    input: str = ""
    response: str = ""
    refusal: str = ""
    is_harmful: bool = False
    category: str = ""
    # answer used by exact-match/numeric metrics for task rows (e.g. "42", "positive")
    target: Optional[str] = None
    meta: dict = field(default_factory=dict)

    def prompt_key(self) -> str:
        """Normalised prompt text: duplicates and split disjointness are decided on it."""
        return normalise_text(f"{self.instruction} {self.input}")

    def to_dict(self) -> dict:
        return asdict(self)


_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalise_text(text: str) -> str:
    """Lower-case, strip punctuation, collapse whitespace."""
    return _WS.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def make_uid(source: str, *parts: object) -> str:
    """Stable uid from the source name and identifying content."""
    digest = hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:12]
    return f"{source}-{digest}"
