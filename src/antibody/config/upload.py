"""Keys of a provider's own upload (`data.user.path`, `data.user.fields.*`, ...).

They live in `UserDataConfig` (`antibody.config.schema`) but are left out of the resolved
YAML while they hold their defaults (`OMIT_WHEN_DEFAULT`, honoured by
`antibody.config.compose.to_yaml`): a run that does not name an upload serialises, and so
hashes (`app/study/plan.py`), exactly as it did before these keys existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Optional

# field metadata: leave the key out of to_yaml/to_container while it equals its default
OMIT_WHEN_DEFAULT = {"omit_when_default": True}


def omit_when(value) -> dict:
    """Field metadata for a key whose DEFAULT CHANGED: left out of the resolved YAML while it
    holds `value`, what every run did before the change (so their keys stay as they were), and
    read back as `value` where a saved config lacks it (`compose.load_saved`); any other value,
    the new default included, is written, so new runs say what they did."""
    return {"omit_when_default": True, "omitted_value": value}


class DuplicatePolicy(StrEnum):
    """What happens to a row whose (prompt, response) repeats an earlier row of the upload."""

    KEEP = "keep"  # trained on as uploaded (reported)
    DROP = "drop"  # only the first occurrence is kept (reported)


@dataclass
class UploadFieldsConfig:
    """Column names of the upload. A row has either prompt (+ response, + input) or a chat
    `messages` list (role/content turns; the last assistant turn is the target)."""

    prompt: str = "prompt"
    response: str = "response"
    input: Optional[str] = None  # an optional second part of the prompt (Alpaca's `input`)
    messages: str = "messages"
    # optional ground-truth tag: analysis only (weights, detector AUROCs), never training
    is_harmful: str = "is_harmful"
