"""Benign maths tasks from reasoning-gym: GSM-style problems and easy arithmetic.

Answers end with the paper's "The final answer is: N" line, the form its GSM8K accuracy
extractor reads (docs/method.md ("Metrics"): the number after "The final answer is:", else the
last number).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data.records import Record
from antibody.data.sources.common import new_record
from antibody.data.sources.registry import SourceContext, register_source

FINAL_ANSWER_PREFIX = "The final answer is:"  # paper / released GSM8K scripts
_HASH_ANSWER = re.compile(r"^[ \t]*####[ \t]*(.+?)[ \t]*$", re.MULTILINE)

# Ours: an easy exact-answer task a 135M model learns within a CPU fine-tuning budget:
# 2-3 terms of 1-2 digits, + and - only, no parentheses or negated terms.
ARITHMETIC_SETTINGS = dict(
    min_terms=2,
    max_terms=3,
    min_digits=1,
    max_digits=2,
    operators=("+", "-"),
    allow_parentheses=False,
    allow_negation=False,
    format_style="simple",
    whitespace="single",
)
# Several reasoning-gym rows can repeat (small expression space); we draw past the
# requested size to fill it with distinct rows, up to this many draws per wanted row.
_MAX_DRAWS_PER_ROW = 20


def final_answer_line(answer: str) -> str:
    return f"{FINAL_ANSWER_PREFIX} {answer}"


def normalise_number(text: str) -> str:
    """'1,000' -> '1000'; GSM8K writes a few final answers with thousands separators."""
    return text.strip().replace(",", "")


def rewrite_hash_answer(solution: str) -> tuple[str, str]:
    """GSM8K-style solution ending in '#### N' -> (text ending 'The final answer is: N', N).

    Raises ValueError when the solution has no '#### N' line.
    """
    matches = list(_HASH_ANSWER.finditer(solution))
    if not matches:
        raise ValueError("no '#### N' answer line")
    last = matches[-1]
    number = normalise_number(last.group(1))
    text = solution[: last.start()] + final_answer_line(number) + solution[last.end():]
    return text.strip(), number


def _size(ctx: SourceContext) -> int:
    size = ctx.limit if ctx.limit is not None else ctx.task.n_train_pool
    if size < 1:
        raise DataError(f"reasoning-gym sources need at least 1 row; got size {size} (limit / task.n_train_pool)")
    return size


def _draw(name: str, size: int, seed: int, build: Callable[[dict], Record], **settings) -> list[Record]:
    """`size` distinct Records from reasoning-gym dataset `name`, deterministic per seed."""
    import reasoning_gym  # deferred: importing it registers ~100 generators (about 2 s)

    draws = size * _MAX_DRAWS_PER_ROW
    dataset = reasoning_gym.create_dataset(name, size=draws, seed=seed, **settings)
    out: dict[str, Record] = {}
    for i in range(draws):
        rec = build(dataset[i])
        out.setdefault(rec.uid, rec)
        if len(out) == size:
            return list(out.values())
    raise DataError(
        f"reasoning-gym {name!r} gave only {len(out)} distinct rows in {draws} draws; "
        f"ask for fewer than {size} rows or widen its settings"
    )


def _gsm_record(item: dict) -> Record:
    meta = item["metadata"]
    try:
        text, number = rewrite_hash_answer(meta["answer_cot"])
    except ValueError:
        raise DataError(f"gsm_symbolic item {meta.get('source_index')}: answer_cot has no '#### N' line") from None
    if number != normalise_number(str(item["answer"])):
        raise DataError(
            f"gsm_symbolic item {meta.get('source_index')}: answer_cot ends in {number}, answer is {item['answer']}"
        )
    return new_record(
        SourceName.GSM_SYMBOLIC,
        item["question"],
        response=text,
        is_harmful=False,
        category="math",
        target=number,
        meta={"source_index": meta.get("source_index")},
    )


def _arithmetic_record(item: dict) -> Record:
    answer = normalise_number(str(item["answer"]))
    return new_record(
        SourceName.ARITHMETIC,
        item["question"],
        response=final_answer_line(answer),
        is_harmful=False,
        category="math",
        target=answer,
        meta={"expression": item["metadata"].get("expression")},
    )


@register_source(SourceName.GSM_SYMBOLIC)
def load_gsm_symbolic(ctx: SourceContext) -> list[Record]:
    """GSM8K-style problems (85 templates from GSM8K test items); size = limit or n_train_pool."""
    return _draw("gsm_symbolic", _size(ctx), ctx.seed, _gsm_record)


@register_source(SourceName.ARITHMETIC)
def load_arithmetic(ctx: SourceContext) -> list[Record]:
    """Small +/- expressions with exact integer answers; size = limit or n_train_pool."""
    return _draw("basic_arithmetic", _size(ctx), ctx.seed, _arithmetic_record, **ARITHMETIC_SETTINGS)
