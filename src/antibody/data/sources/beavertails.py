"""BeaverTails (PKU-Alignment) and the RepNoise/Booster/Antibody alignment file.

Schemas (docs/data.md ("Hub sources")):
- BeaverTails: prompt, response, category (dict of 14 booleans), is_safe.
- beavertails_with_refusals_train*.json: a JSON list of BeaverTails rows (all unsafe) with
  `refusal` = "Question: <prompt>\\nAnswer: <refusal text>".
- BeaverTails-Evaluation: prompt, category (str), category_id (0-13); 700 rows.
"""

from __future__ import annotations

import json

from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data.records import Record
from antibody.data.sources.common import clean, dedupe, new_record
from antibody.data.sources.hub import HubSpec, RawRow, SplitRole, parse_bool, read_rows, row_meta
from antibody.data.sources.registry import SourceContext, register_source

BEAVERTAILS = HubSpec(
    default_path="PKU-Alignment/BeaverTails",
    # 30k splits: the ones the harmful-fine-tuning code bases draw from (Vaccine/Booster)
    splits=((SplitRole.TRAIN, "30k_train"), (SplitRole.EVAL, "30k_test")),
    local_role=SplitRole.TRAIN,
)
BEAVERTAILS_REFUSAL = HubSpec(
    default_path=None,
    splits=((SplitRole.TRAIN, "train"),),
    local_role=SplitRole.TRAIN,
    hint="It is RepNoise's beavertails_with_refusals_train.json (also used by Booster and Antibody); "
    "download it and set data.paths.beavertails_refusal to the file.",
)
BEAVERTAILS_EVAL = HubSpec(
    default_path="PKU-Alignment/BeaverTails-Evaluation",
    splits=((SplitRole.EVAL, "test"),),
    local_role=SplitRole.EVAL,
)
REFUSAL_SEPARATOR = "\nAnswer: "  # the RepNoise file's "Question: ...\nAnswer: ..." layout
_QUESTION_PREFIX = "Question: "


def _categories(raw: RawRow) -> str:
    """The true keys of BeaverTails' category dict, joined with ';' (keys contain commas)."""
    value = raw.row["category"]
    if isinstance(value, str):  # CSV exports hold the dict as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{raw.location()}: category is not a JSON object: {value[:60]!r}") from None
    if not isinstance(value, dict):
        raise DataError(f"{raw.location()}: category must be a dict of booleans, got {type(value).__name__}")
    return ";".join(k for k, flag in value.items() if parse_bool(flag, raw, f"category.{k}"))


def _beavertails_record(source: SourceName, raw: RawRow, **meta) -> Record:
    raw.require(["prompt", "response", "category", "is_safe"])
    prompt, response = clean(raw.row["prompt"]), clean(raw.row["response"])
    return new_record(
        source,
        prompt,
        response=response,
        is_harmful=not parse_bool(raw.row["is_safe"], raw, "is_safe"),
        category=_categories(raw),
        meta=row_meta(raw, **meta),
        uid_parts=(raw.role.value, prompt, response),
    )


@register_source(SourceName.BEAVERTAILS)
def load_beavertails(ctx: SourceContext) -> list[Record]:
    """(prompt, response) pairs; is_harmful = not is_safe; meta["split"] = train/eval."""
    rows = read_rows(SourceName.BEAVERTAILS, BEAVERTAILS, ctx)
    return dedupe([_beavertails_record(SourceName.BEAVERTAILS, raw) for raw in rows])


def split_refusal(raw: RawRow) -> str:
    """The refusal text of a RepNoise row ("Question: <prompt>\\nAnswer: <refusal>")."""
    text = str(raw.row["refusal"])
    question, sep, answer = text.partition(REFUSAL_SEPARATOR)
    if not sep or not answer.strip():
        raise DataError(f"{raw.location()}: refusal lacks the '\\nAnswer: ' separator: {text[:60]!r}")
    if not question.startswith(_QUESTION_PREFIX):
        raise DataError(f"{raw.location()}: refusal does not start with 'Question: ': {text[:60]!r}")
    return answer.strip()


@register_source(SourceName.BEAVERTAILS_REFUSAL)
def load_beavertails_refusal(ctx: SourceContext) -> list[Record]:
    """Harmful pairs whose meta["alignment_refusal"] holds the file's refusal for the prompt."""
    rows = read_rows(SourceName.BEAVERTAILS_REFUSAL, BEAVERTAILS_REFUSAL, ctx)
    records = []
    for raw in rows:
        raw.require(["refusal"])
        records.append(_beavertails_record(SourceName.BEAVERTAILS_REFUSAL, raw, alignment_refusal=split_refusal(raw)))
    return dedupe(records)


@register_source(SourceName.BEAVERTAILS_EVAL)
def load_beavertails_eval(ctx: SourceContext) -> list[Record]:
    """700 harmful evaluation prompts, 50 per category (prompts only)."""
    records = []
    for raw in read_rows(SourceName.BEAVERTAILS_EVAL, BEAVERTAILS_EVAL, ctx):
        raw.require(["prompt", "category", "category_id"])
        try:
            category_id = int(raw.row["category_id"])
        except (TypeError, ValueError):
            raise DataError(f"{raw.location()}: category_id={raw.row['category_id']!r} is not an integer") from None
        records.append(
            new_record(
                SourceName.BEAVERTAILS_EVAL,
                clean(raw.row["prompt"]),
                is_harmful=True,
                category=clean(raw.row["category"]),
                meta=row_meta(raw, category_id=category_id),
                uid_parts=(clean(raw.row["prompt"]),),
            )
        )
    return dedupe(records)
