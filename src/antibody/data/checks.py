"""Leak checks of a build: no prompt in two splits that must be disjoint, none a judge owns."""

from __future__ import annotations

from antibody.config.errors import DataError
from antibody.data.plan import DERIVED_SPLITS, EVAL_SPLITS, Split
from antibody.data.records import Record


def check_forbidden(splits: dict[Split, list[Record]], forbidden: set[str]) -> None:
    """DataError if a split holds a forbidden prompt (a judge's training or validation
    prompt: a model trained or scored on it would make the judge's validation a leak)."""
    for split, rows in splits.items():
        hits = sorted({r.prompt_key() for r in rows} & forbidden)
        if hits:
            raise DataError(
                f"{len(hits)} prompt(s) of split '{split.value}' belong to the judges' labelled training or "
                f"validation data (e.g. {hits[0][:80]!r}); choose other data.* sources for it"
            )


def check_disjoint(splits: dict[Split, list[Record]], allowed: set[frozenset] = frozenset()) -> None:
    """DataError if a prompt is in an evaluation and a training split (or in two
    training splits, except pairs in `allowed`, or in two evaluation splits). Derived
    splits (plan.DERIVED_SPLITS) reuse their parents' rows and are checked against the
    evaluation splits only."""
    keys = {s: {r.prompt_key() for r in rows} for s, rows in splits.items()}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if frozenset({a, b}) in allowed:
                continue
            if (a in DERIVED_SPLITS or b in DERIVED_SPLITS) and not (a in EVAL_SPLITS or b in EVAL_SPLITS):
                continue
            common = keys[a] & keys[b]
            if common:
                example = sorted(common)[0]
                kind = (
                    "an evaluation and a training split"
                    if (a in EVAL_SPLITS) != (b in EVAL_SPLITS)
                    else "two splits"
                )
                raise DataError(
                    f"{len(common)} prompt(s) are in {kind}: '{a.value}' and '{b.value}' "
                    f"(e.g. {example[:80]!r}); evaluation must be on held-out prompts"
                )
