"""The adaptive attacks' rows (config/attack.py: refusal_prefix, self_written), built knowing
the defence under the attacked (aligned) model: docs/data.md ("Attacks")."""

from antibody.data.adaptive.attacked import AttackedModel
from antibody.data.adaptive.refusal_prefix import CANDIDATES, PREFIXES, TRANSITIONS, prefixed_answer
from antibody.data.adaptive.self_written import SOURCE as SELF_WRITTEN_SOURCE
from antibody.data.adaptive.upload import AdaptiveUpload

__all__ = [
    "CANDIDATES",
    "PREFIXES",
    "SELF_WRITTEN_SOURCE",
    "TRANSITIONS",
    "AdaptiveUpload",
    "AttackedModel",
    "prefixed_answer",
]
