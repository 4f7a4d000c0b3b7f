"""What an adaptive attacker holds: the attacked (aligned) model, as the data layer sees it.

The adaptive attacks (config/attack.py: refusal_prefix, self_written) build their rows under
the model the fine-tuning starts from (`run.init_from`). The data layer imports no model: the
application hands it an `AttackedModel` (app/attacked.py) whose `identity` names the model
without loading it, so that every cache of an adaptive attack is keyed by the aligned run's
adapter and a build whose rows are all cached never loads the model; `score` and `complete`
load it on first use.
"""

from __future__ import annotations

from typing import Protocol

from antibody.data.records import Record


class AttackedModel(Protocol):
    """The aligned model an adaptive attack is built under (the provider's, the strongest case)."""

    # names the model without loading it: the base model, and a digest of the aligned run's
    # adapter files (and of any adapters beneath it); part of every adaptive cache key
    identity: dict

    def score(self, records: list[Record]) -> list[float]:
        """r = log p(y|x) - log p(y_r|x) of each row (its own response, its refusal view), as the
        Antibody weighting computes it (method.finetune.ratio_form), in order."""
        ...

    def complete(self, instructions: list[str], prefill: str) -> list[str]:
        """The model's greedy continuation of each raw user turn, its assistant turn prefilled
        with `prefill` (the new text only; the caller joins the two)."""
        ...
