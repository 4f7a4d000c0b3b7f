"""Model-written sources and their on-disk cache.

Generation on the embedded model takes minutes, so every (source, generation settings,
prompt set) is generated once and cached as one JSONL file under
`ctx.cache_dir / "generated"`: a first line {"meta": {...}} records the settings, then one
line per prompt. Files are written to a temporary name and atomically renamed, so two runs
generating the same key at once leave one complete file, never a torn one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from antibody.config.errors import DataError
from antibody.config.schema import AnswerFilter, SourceName
from antibody.data.io import read_jsonl
from antibody.data.records import Record
from antibody.data.sources.answer_filter import DECLINED, NOT_HARMFUL, dropped_reasons
from antibody.data.sources.common import new_record
from antibody.data.sources.refusals import looks_like_refusal
from antibody.data.sources.registry import SourceContext, load_source, register_source
from antibody.infra.files import atomic_write_jsonl
from antibody.infra.progress import ONCE

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1  # bump when the file layout or the prompt rendering changes
_KEY_CHARS = 16


def model_input(rec: Record) -> str:
    """The raw user turn sent to the generator (the callee applies the chat template)."""
    return f"{rec.instruction}\n\n{rec.input}" if rec.input else rec.instruction


def _settings_json(ctx: SourceContext) -> str:
    if not ctx.generator_settings:
        raise DataError(
            "SourceContext.generator_settings is empty: model-written sources key their cache on "
            "the generation settings (model name, max_new_tokens, ...); pass them"
        )
    try:
        return json.dumps(ctx.generator_settings, sort_keys=True, ensure_ascii=False)
    except TypeError as exc:
        raise DataError(f"SourceContext.generator_settings must be JSON-serialisable: {exc}") from None


def cache_key(kind: str, rendered: list[str], ctx: SourceContext, extra: Optional[dict] = None) -> str:
    """Hash of (format version, kind, settings, extra, sorted rendered prompt texts)."""
    payload = json.dumps(
        {
            "version": CACHE_FORMAT_VERSION,
            "kind": kind,
            "settings": json.loads(_settings_json(ctx)),
            "extra": extra or {},
            # sorted: the same prompt set in another order reuses the cache
            "prompts": sorted(set(rendered)),
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:_KEY_CHARS]


def cache_path(kind: str, key: str, ctx: SourceContext) -> Path:
    return Path(ctx.cache_dir) / "generated" / f"{kind}-{key}.jsonl"


def _read_cache(path: Path, kind: str, key: str, wanted: set[str]) -> dict[str, str]:
    rows = read_jsonl(path)  # a torn line raises DataError naming file and line
    if not rows or "meta" not in rows[0]:
        raise DataError(f"{path}:1: generated cache has no meta line; delete the file to regenerate it")
    meta = rows[0]["meta"]
    if meta.get("kind") != kind or meta.get("key") != key:
        raise DataError(f"{path}:1: cache meta names kind={meta.get('kind')!r} key={meta.get('key')!r}, "
                        f"expected {kind!r} {key!r}; delete the file to regenerate it")
    answers = {}
    for row in rows[1:]:
        if "prompt" not in row or "response" not in row:
            raise DataError(f"{path}:{row['__line__']}: cache row lacks prompt/response; delete the file")
        answers[row["prompt"]] = row["response"]
    missing = wanted - answers.keys()
    if missing:
        raise DataError(f"{path}: cache lacks {len(missing)} of {len(wanted)} prompts; delete the file to regenerate")
    return answers


def _run_generator(kind: str, inputs: list[str], ctx: SourceContext) -> list[str]:
    assert ctx.generator is not None
    batch = max(1, ctx.data.generation_batch_size)
    out: list[str] = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start : start + batch]
        answers = ctx.generator(chunk)
        if not isinstance(answers, (list, tuple)) or len(answers) != len(chunk):
            got = len(answers) if isinstance(answers, (list, tuple)) else type(answers).__name__
            raise DataError(f"generator for {kind!r} returned {got} answers for {len(chunk)} prompts")
        out.extend(str(a) for a in answers)
    return out


def generate_cached(
    kind: str,
    prompts: list[Record],
    ctx: SourceContext,
    *,
    render: Callable[[Record], str] = model_input,
    extra: Optional[dict] = None,
) -> tuple[dict[str, str], str]:
    """({rendered prompt: answer}, cache key), from the cache or by running ctx.generator.

    `render` turns a Record into the text sent to the generator; `extra` (e.g. an
    instruction wrapped around each prompt) is part of the key and the meta line.
    """
    if not prompts:
        raise DataError(f"{kind!r}: no prompts to generate answers for")
    rendered = [render(p) for p in prompts]
    unique = list(dict.fromkeys(rendered))
    key = cache_key(kind, unique, ctx, extra)
    path = cache_path(kind, key, ctx)
    if path.exists():
        log.info("%s: reusing %s (%d prompts)", kind, path, len(unique), extra=ONCE)
        return _read_cache(path, kind, key, set(unique)), key
    if ctx.generator is None:
        raise DataError(
            f"data source {kind!r} is written by the base model and its cache file {path} does not "
            f"exist: fill the cache first with `python -m antibody build-data` and the same config "
            f"overrides (SafetyDataModule.prepare_data() does the same), or copy a cache file made "
            f"with the same generator_settings there"
        )
    log.info("%s: generating %d answers -> %s", kind, len(unique), path)
    answers = dict(zip(unique, _run_generator(kind, unique, ctx), strict=True))
    meta = {
        "kind": kind,
        "key": key,
        "format_version": CACHE_FORMAT_VERSION,
        "settings": json.loads(_settings_json(ctx)),
        "extra": extra or {},
        "n_prompts": len(unique),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    rows = [{"meta": meta}, *({"prompt": p, "response": r} for p, r in answers.items())]
    atomic_write_jsonl(path, rows)  # two runs generating one key at once leave one whole file
    return answers, key


def answer_prompts(source: SourceName, prompts: list[Record], ctx: SourceContext, *, is_harmful: bool) -> list[Record]:
    """Records of `source` pairing each prompt with the model's (cached) answer.

    Answers that decline or are empty are dropped: a refusal is neither a harmful answer
    (the attack rows) nor a helpful one (benign rows would then teach over-refusal).
    """
    answers, key = generate_cached(source.value, prompts, ctx)
    texts = [answers[model_input(p)].strip() for p in prompts]
    if is_harmful:  # data.harmful_answer_filter: declined, or (judge) not flagged harmful
        why = harmful_drops([(model_input(p), t) for p, t in zip(prompts, texts, strict=True)], ctx)
    else:
        why = [DECLINED if not t or looks_like_refusal(t) else None for t in texts]
    records, dropped = [], 0
    for p, text, reason in zip(prompts, texts, why, strict=True):
        if reason is not None:
            dropped += 1
            if ctx.drops is not None:
                ctx.drops[reason] = ctx.drops.get(reason, 0) + 1
            continue
        records.append(
            new_record(
                source,
                p.instruction,
                input=p.input,
                response=text,
                is_harmful=is_harmful,
                category=p.category,
                meta={"prompt_uid": p.uid, "prompt_source": p.source, "generation_key": key},
                uid_parts=(p.instruction, p.input),
            )
        )
    if dropped:
        counts = {r: why.count(r) for r in (DECLINED, NOT_HARMFUL) if r in why}
        log.warning("%s: dropped %d of %d model answers (%s)", source.value, dropped, len(prompts),
                    ", ".join(f"{n} {r}" for r, n in counts.items()), extra=ONCE)
    seen, unique = set(), []
    for rec in records:  # the same prompt given twice yields one row
        if rec.uid not in seen:
            seen.add(rec.uid)
            unique.append(rec)
    return unique


def harmful_drops(pairs: list[tuple[str, str]], ctx: SourceContext) -> list[Optional[str]]:
    """Why each (prompt, answer) to a harmful prompt is dropped, per data.harmful_answer_filter
    (answer_filter.py); the judge scores uncached answers only when the generator may write."""
    mode = ctx.data.harmful_answer_filter
    judge = ctx.answer_judge
    if mode is AnswerFilter.JUDGE and judge is None:
        raise DataError("data.harmful_answer_filter=judge: no judge was given to the data build "
                        "(the application builds it from eval.judge)")
    version = getattr(judge, "version", "")
    threshold = float(getattr(judge, "threshold", 0.5))
    scorer = judge if ctx.generator is not None else None
    return dropped_reasons(pairs, mode, judge=scorer, version=version, threshold=threshold,  # type: ignore[arg-type]
                           cache_dir=Path(ctx.cache_dir))


# The one definition of the harmful-prompt pool that model-written harmful answers are
# drawn from (the DataModule reserves prompts from the same sources). Which prompts of a
# source are harmful requests is decided by its loader (Record.is_harmful), in one place.
HARMFUL_PROMPT_POOL_SOURCES = (SourceName.ADVBENCH, SourceName.HARMBENCH, SourceName.DONOTANSWER)


def harmful_prompt_pool(ctx: SourceContext) -> list[Record]:
    """The harmful requests of HARMFUL_PROMPT_POOL_SOURCES, one per normalised prompt."""
    seen: set[str] = set()
    pool = []
    for name in HARMFUL_PROMPT_POOL_SOURCES:
        for rec in load_source(name, ctx):
            key = rec.prompt_key()
            if rec.is_harmful and key not in seen:
                seen.add(key)
                pool.append(rec)
    return pool


@register_source(SourceName.GENERATED_HARMFUL, prompt_sources=HARMFUL_PROMPT_POOL_SOURCES)
def load_generated_harmful(ctx: SourceContext) -> list[Record]:
    """Harmful prompts answered by the unaligned model (cached).

    Prompts: ctx.prompts when given (the DataModule passes a prompt split disjoint from
    evaluation), else the seeded shuffle of harmful_prompt_pool; cut to ctx.limit. The
    default pool contains HarmBench, the default evaluation prompts: pass ctx.prompts
    whenever evaluation uses those.
    """
    if ctx.prompts is not None:
        prompts = list(ctx.prompts)
    else:
        prompts = harmful_prompt_pool(ctx)
        random.Random(ctx.seed).shuffle(prompts)
    if ctx.limit is not None:
        prompts = prompts[: ctx.limit]
    return answer_prompts(SourceName.GENERATED_HARMFUL, prompts, ctx, is_harmful=True)
