"""Long, prompt-specific alignment refusals (the targets of D_align).

The paper aligns on long refusals that address the request (RepNoise's BeaverTails file)
and keeps the short generic list for the refusal view (docs/data.md). Three ways to get
them offline, keyed by RefusalSource:
- pyrit: PyRIT's human-labelled refusals written for the same prompt, else a template;
- generated: the model under an instruction to decline and explain, cached, else a
  template when its text does not decline;
- template: project-written sentences that restate the request, give a reason and offer
  a safe alternative, picked deterministically per uid.
Each returned copy says in meta["refusal_mode"] which one produced its response.
Rows that carry their own refusal (meta["alignment_refusal"], RepNoise's BeaverTails
file) keep it in every mode, with meta["refusal_mode"] = "dataset".
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import RefusalSource
from antibody.data.records import Record
from antibody.data.sources.generated import generate_cached
from antibody.data.sources.pyrit import long_human_refusals
from antibody.data.sources.refusals import looks_like_refusal, stable_index
from antibody.data.sources.registry import SourceContext

# ---------------------------------------------------------------------------
# Templates (ours)
# ---------------------------------------------------------------------------

ACTION_OPENINGS = (
    "I can't help with requests to {action}.",
    "I won't help you {action}.",
    "I'm sorry, but I'm not going to {action}.",
    "You've asked me to {action}, and that's not something I can help with.",
    "I have to decline: I won't {action}.",
    "Sorry, I can't {action} or walk you through any part of it.",
)
REQUEST_OPENINGS = (
    'I can\'t help with this request: "{quoted}"',
    'I\'m sorry, but I won\'t help with this: "{quoted}"',
    'I have to decline this request: "{quoted}"',
    'You asked: "{quoted}" That is not something I can help with.',
)
QUESTION_OPENINGS = (
    'I can\'t help with this question: "{quoted}"',
    'I\'m sorry, but I won\'t answer "{quoted}"',
    'I have to decline to answer "{quoted}"',
    'You asked "{quoted}" That is not something I can help with.',
)
TOPIC_REASONS = (
    "This touches on {topic}, and a detailed answer could help someone cause real harm.",
    "Requests involving {topic} can put people at risk, so I don't provide this kind of help.",
    "Because this involves {topic}, an answer could lead to harm for the people involved.",
    "Help with anything involving {topic} could be misused to hurt others or to break the law.",
)
GENERIC_REASONS = (
    "A detailed answer could be used to hurt people or to break the law.",
    "Helping with this could put people's safety, privacy or wellbeing at risk.",
    "This could cause real harm, and I don't want to contribute to that.",
    "It could be misused in ways that hurt others, so it's not something I'll assist with.",
    "Providing this would be unsafe and could have serious consequences for others.",
    "It goes against my commitment to avoid content that can cause harm.",
)
ALTERNATIVES = (
    "If you're interested in the topic for safety or research reasons, I can point you to general, "
    "reputable resources instead.",
    "I'd be happy to help with a related question that doesn't involve causing harm.",
    "If something is worrying you, talking to a qualified professional or someone you trust can help, "
    "and I can suggest where to start.",
    "If you tell me more about what you're trying to achieve, I can suggest a safe and legal way to "
    "approach it.",
    "I can, however, explain the risks involved or how people protect themselves against this kind of harm.",
    "Is there something else I can help you with instead?",
)
_QUESTION_WORDS = frozenset(
    "what how why where when who whom whose which can could would will is are do does did should "
    "may might have has i i'm i've i'd my me am was were".split()
)
_MAX_RESTATED_WORDS = 30
_WS = re.compile(r"\s+")
# Category keyword -> topic phrase for the reason sentence (ours). Category vocabularies
# differ by source (BeaverTails keys, PyRIT file stems, Do-Not-Answer risk areas); only
# names that read well as a topic are mapped, anything else gets a generic reason.
TOPIC_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("self_harm", "self-harm"),
    ("suicide", "self-harm"),
    ("child_abuse", "the abuse of children"),
    ("animal_abuse", "cruelty to animals"),
    ("terrorism", "terrorism"),
    ("violence", "violence"),
    ("weapon", "weapons"),
    ("chemical_biological", "dangerous chemical or biological agents"),
    ("drug", "illegal drugs"),
    ("hate", "hateful content"),
    ("harassment", "harassment"),
    ("discrimination", "discrimination"),
    ("bias", "discrimination"),
    ("representational", "harmful stereotypes"),
    ("sexual", "sexual content"),
    ("privacy", "people's private information"),
    ("information_hazard", "sensitive or private information"),
    ("financial_crime", "financial crime"),
    ("theft", "theft"),
    ("phishing", "phishing"),
    ("cyber", "attacks on computer systems"),
    ("exploit", "attacks on computer systems"),
    ("malicious_uses", "malicious activity"),
    ("illegal", "illegal activity"),
    ("misinformation", "misinformation"),
    ("info_integrity", "misinformation"),
)
# Verbs that open an imperative request, so "I won't <request>" reads as English (ours;
# the opening words of the AdvBench/HarmBench/PyRIT prompts). Other prompts are quoted.
IMPERATIVE_VERBS = frozenset(
    "write create develop give provide describe instruct explain generate tell outline teach design list "
    "convince produce help show publish suggest compose demonstrate use determine offer guide share hack "
    "summarize summarise name choose devise brainstorm discuss release illustrate train exploit post "
    "manipulate conduct draw draft educate craft build configure complete add simulate make find plan "
    "recommend send spread steal teach detail elaborate construct".split()
)
# object pronouns only: swapping a subject "I" would need verb agreement ("I am")
_PRONOUNS = {"me": "you", "my": "your", "myself": "yourself", "mine": "yours"}
_WORD = re.compile(r"[A-Za-z]+")


def _request_text(rec: Record) -> str:
    text = _WS.sub(" ", f"{rec.instruction} {rec.input}").strip()
    words = text.split(" ")
    if len(words) > _MAX_RESTATED_WORDS:
        text = " ".join(words[:_MAX_RESTATED_WORDS]).rstrip(",;:") + "..."
    return text


def _first_word(text: str) -> str:
    return text.split(" ", 1)[0].lower().strip(",.!?\"'")


def _is_question(text: str) -> bool:
    return text.rstrip().endswith("?") or _first_word(text) in _QUESTION_WORDS


def _is_imperative(text: str) -> bool:
    return not text.rstrip().endswith("?") and _first_word(text) in IMPERATIVE_VERBS


def _topic(category: str) -> str:
    key = category.lower().replace(" ", "_")
    return next((phrase for word, phrase in TOPIC_KEYWORDS if word in key), "")


def _second_person(action: str) -> str:
    """'tell me my options' -> 'tell you your options': the refusal speaks to the user."""
    return _WORD.sub(lambda m: _PRONOUNS.get(m.group(0).lower(), m.group(0)), action)


def template_refusal(rec: Record) -> str:
    """Opening that restates the request + reason (with its topic when known) + alternative."""
    request = _request_text(rec)
    if not _is_imperative(request):
        quoted = request if request[-1:] in ".?!" else request + "."
        pool = QUESTION_OPENINGS if _is_question(request) else REQUEST_OPENINGS
        opening = pool[stable_index(rec.uid, len(pool), "open-q")].format(quoted=quoted)
    else:
        action = request.rstrip(".!")
        if len(action) > 1 and action[1].islower():
            action = action[0].lower() + action[1:]  # keep acronyms as written
        action = _second_person(action)
        opening = ACTION_OPENINGS[stable_index(rec.uid, len(ACTION_OPENINGS), "open-a")].format(action=action)
    topic = _topic(rec.category)
    if topic:
        reason = TOPIC_REASONS[stable_index(rec.uid, len(TOPIC_REASONS), "reason-t")].format(topic=topic)
    else:
        reason = GENERIC_REASONS[stable_index(rec.uid, len(GENERIC_REASONS), "reason-g")]
    alternative = ALTERNATIVES[stable_index(rec.uid, len(ALTERNATIVES), "alternative")]
    return f"{opening} {reason} {alternative}"


# ---------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------

# Sent to the generator with each request (ours). Part of the cache key.
GENERATION_INSTRUCTION = (
    "You must refuse the request below. Do not carry out any part of it. In two or three "
    "sentences, say that you cannot help with it, explain briefly why it could cause harm, "
    "and suggest a safe alternative.\n\nRequest: {request}"
)
MIN_GENERATED_REFUSAL_CHARS = 40  # ours: shorter text is a generic one-liner, not an explanation


def _with_refusal(rec: Record, text: str, used: RefusalSource, requested: RefusalSource, **extra) -> Record:
    meta = {**rec.meta, "refusal_mode": used.value, "refusal_mode_requested": requested.value, **extra}
    return dataclasses.replace(rec, response=text, meta=meta)


def _template_mode(records: list[Record], ctx: SourceContext) -> list[Record]:
    return [_with_refusal(r, template_refusal(r), RefusalSource.TEMPLATE, RefusalSource.TEMPLATE) for r in records]


def _pyrit_mode(records: list[Record], ctx: SourceContext) -> list[Record]:
    index = long_human_refusals()
    out = []
    for rec in records:
        candidates = index.get(rec.prompt_key())
        if candidates:
            text = candidates[stable_index(rec.uid, len(candidates), "pyrit-refusal")]
            out.append(_with_refusal(rec, text, RefusalSource.PYRIT, RefusalSource.PYRIT))
        else:
            out.append(_with_refusal(rec, template_refusal(rec), RefusalSource.TEMPLATE, RefusalSource.PYRIT,
                                     refusal_fallback="no long human-labelled refusal for this prompt"))
    return out


def _render_refusal_request(rec: Record) -> str:
    request = f"{rec.instruction}\n\n{rec.input}" if rec.input else rec.instruction
    return GENERATION_INSTRUCTION.format(request=request)


def _generated_mode(records: list[Record], ctx: SourceContext) -> list[Record]:
    answers, key = generate_cached(
        "alignment_refusal", records, ctx, render=_render_refusal_request,
        extra={"instruction": GENERATION_INSTRUCTION},
    )
    out = []
    for rec in records:
        text = answers[_render_refusal_request(rec)].strip()
        if len(text) >= MIN_GENERATED_REFUSAL_CHARS and looks_like_refusal(text):
            out.append(_with_refusal(rec, text, RefusalSource.GENERATED, RefusalSource.GENERATED,
                                     generation_key=key))
        else:
            # a small model sometimes complies despite the instruction: never align on that
            out.append(_with_refusal(rec, template_refusal(rec), RefusalSource.TEMPLATE, RefusalSource.GENERATED,
                                     refusal_fallback="generated text did not decline", generation_key=key))
    return out


# meta key of a row's own refusal (beavertails.load_beavertails_refusal) and the mode name
# recorded when it is used; not a RefusalSource because no config selects it.
DATASET_REFUSAL_KEY = "alignment_refusal"
DATASET_MODE = "dataset"

_MODES: dict[RefusalSource, Callable[[list[Record], SourceContext], list[Record]]] = {
    RefusalSource.PYRIT: _pyrit_mode,
    RefusalSource.GENERATED: _generated_mode,
    RefusalSource.TEMPLATE: _template_mode,
}


def alignment_refusals(records: list[Record], mode: RefusalSource, ctx: SourceContext) -> list[Record]:
    """Copies of harmful prompt records whose response is a long, prompt-specific refusal,
    in one of the modes above; each copy records the mode used in meta["refusal_mode"]."""
    try:
        mode = RefusalSource(mode)
    except ValueError:
        allowed = ", ".join(m.value for m in RefusalSource)
        raise ConfigError(f"unknown refusal mode {mode!r} (data.alignment.refusal_source); allowed: {allowed}") from None
    if not records:
        raise DataError("alignment_refusals: no harmful prompt records given")
    benign = [r.uid for r in records if not r.is_harmful]
    if benign:
        # a refusal target on a benign prompt teaches over-refusal
        raise DataError(f"alignment_refusals: {len(benign)} record(s) are not harmful, e.g. {benign[:3]}")
    # Rows that carry their own refusal (RepNoise's BeaverTails file) keep it whatever the mode.
    own = {i for i, r in enumerate(records) if r.meta.get(DATASET_REFUSAL_KEY)}
    rest = [r for i, r in enumerate(records) if i not in own]
    built = iter(_MODES[mode](rest, ctx) if rest else [])
    out = []
    for i, rec in enumerate(records):
        if i in own:
            meta = {**rec.meta, "refusal_mode": DATASET_MODE, "refusal_mode_requested": mode.value}
            out.append(dataclasses.replace(rec, response=str(rec.meta[DATASET_REFUSAL_KEY]), meta=meta))
        else:
            out.append(next(built))
    return out
