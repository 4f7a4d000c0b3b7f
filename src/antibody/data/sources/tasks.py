"""Benign fine-tuning tasks of the paper, from the hub: SST2, AG News, GSM8K, AlpacaEval.

Instructions and answer formats follow the released scripts (Booster/Antibody
build_dataset.py files). Rows carry meta["split"] = "train" (the upload pool) or "eval"
(the Fine-tune Accuracy set: SST2 validation, AG News / GSM8K test, AlpacaEval eval).
"""

from __future__ import annotations

from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data.records import Record
from antibody.data.sources.common import clean, dedupe, new_record
from antibody.data.sources.hub import HubSpec, RawRow, SplitRole, parse_label, read_rows, row_meta
from antibody.data.sources.reasoning import rewrite_hash_answer
from antibody.data.sources.registry import SourceContext, register_source

SST2_INSTRUCTION = "Analyze the sentiment of the input, and respond only positive or negative"  # released scripts
SST2_LABELS = {0: "negative", 1: "positive"}
AGNEWS_INSTRUCTION = (  # released scripts
    "Categorize the news article given in the input into one of the 4 categories:\n\nWorld\nSports\nBusiness\nSci/Tech\n"
)
AGNEWS_LABELS = {0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}

# Current hub ids (their dataset cards; the old aliases sst2, ag_news, gsm8k name the same rows)
SST2 = HubSpec("stanfordnlp/sst2", ((SplitRole.TRAIN, "train"), (SplitRole.EVAL, "validation")), SplitRole.TRAIN)
AGNEWS = HubSpec("fancyzhx/ag_news", ((SplitRole.TRAIN, "train"), (SplitRole.EVAL, "test")), SplitRole.TRAIN)
GSM8K = HubSpec("openai/gsm8k", ((SplitRole.TRAIN, "train"), (SplitRole.EVAL, "test")), SplitRole.TRAIN,
                config="main")
ALPACA = HubSpec("tatsu-lab/alpaca", ((SplitRole.TRAIN, "train"),), SplitRole.TRAIN)
ALPACA_EVAL = HubSpec(
    "tatsu-lab/alpaca_eval",
    ((SplitRole.EVAL, "eval"),),
    SplitRole.EVAL,
    # the repo's loader is a script (unsupported by datasets >= 4): read its JSON file directly
    data_files={"eval": "alpaca_eval.json"},
)


def _classification(source: SourceName, raw: RawRow, text_field: str, instruction: str, labels) -> Record:
    raw.require([text_field, "label"])
    text = clean(raw.row[text_field])
    answer = parse_label(raw.row["label"], raw, labels)
    return new_record(
        source,
        instruction,
        input=text,
        response=answer,
        is_harmful=False,
        target=answer,
        meta=row_meta(raw),
        uid_parts=(raw.role.value, text, answer),
    )


@register_source(SourceName.SST2)
def load_sst2(ctx: SourceContext) -> list[Record]:
    rows = read_rows(SourceName.SST2, SST2, ctx)
    return dedupe([_classification(SourceName.SST2, r, "sentence", SST2_INSTRUCTION, SST2_LABELS) for r in rows])


@register_source(SourceName.AGNEWS)
def load_agnews(ctx: SourceContext) -> list[Record]:
    rows = read_rows(SourceName.AGNEWS, AGNEWS, ctx)
    return dedupe([_classification(SourceName.AGNEWS, r, "text", AGNEWS_INSTRUCTION, AGNEWS_LABELS) for r in rows])


@register_source(SourceName.GSM8K)
def load_gsm8k(ctx: SourceContext) -> list[Record]:
    """question -> reasoning ending "The final answer is: N" (released scripts), target N."""
    records = []
    for raw in read_rows(SourceName.GSM8K, GSM8K, ctx):
        raw.require(["question", "answer"])
        question = clean(raw.row["question"])
        try:
            response, number = rewrite_hash_answer(str(raw.row["answer"]))
        except ValueError:
            raise DataError(f"{raw.location()}: answer has no '#### N' final line") from None
        records.append(
            new_record(
                SourceName.GSM8K,
                question,
                response=response,
                is_harmful=False,
                category="math",
                target=number,
                meta=row_meta(raw),
                uid_parts=(raw.role.value, question, response),
            )
        )
    return dedupe(records)


@register_source(SourceName.ALPACA_EVAL)
def load_alpaca_eval(ctx: SourceContext) -> list[Record]:
    """805 instructions with the reference model's output (the win-rate baseline)."""
    records = []
    for raw in read_rows(SourceName.ALPACA_EVAL, ALPACA_EVAL, ctx):
        raw.require(["instruction", "output"])
        instruction, output = clean(raw.row["instruction"]), clean(raw.row["output"])
        records.append(
            new_record(
                SourceName.ALPACA_EVAL,
                instruction,
                response=output,
                is_harmful=False,
                category=clean(raw.row.get("dataset")),
                meta=row_meta(raw, generator=clean(raw.row.get("generator"))),
                uid_parts=(raw.role.value, instruction, output),
            )
        )
    return dedupe(records)


@register_source(SourceName.ALPACA)
def load_alpaca(ctx: SourceContext) -> list[Record]:
    """The AlpacaEval task: instruction data for the upload (tatsu-lab/alpaca: instruction,
    input, output; 52,002 rows) and AlpacaEval's 805 prompts, tagged `eval`, as its held-out
    evaluation (their reference answers are the win-rate baseline)."""
    records = []
    for raw in read_rows(SourceName.ALPACA, ALPACA, ctx):
        raw.require(["instruction", "output"])
        instruction, extra, output = (clean(raw.row.get(k)) for k in ("instruction", "input", "output"))
        records.append(new_record(SourceName.ALPACA, instruction, input=extra, response=output, is_harmful=False,
                                  meta=row_meta(raw), uid_parts=(raw.role.value, instruction, extra, output)))
    for rec in load_alpaca_eval(ctx):
        records.append(new_record(SourceName.ALPACA, rec.instruction, response=rec.response, is_harmful=False,
                                  category=rec.category, target=rec.response, meta=dict(rec.meta),
                                  uid_parts=("eval", rec.instruction, rec.response)))
    return dedupe(records)
