"""Which model-written answers to harmful prompts become harmful rows
(`data.harmful_answer_filter`, docs/data.md "Model-written harmful answers").

The paper's harmful rows are BeaverTails answers that people labelled unsafe; ours are the
base model's own answers, and a small model often declines, disputes the premise or writes
nonsense instead. `keyword` (until 2026-12) drops the answers whose opening makes a
declining statement (`looks_like_refusal`); `refusal` drops those the evaluation's
refusal detector flags (`is_refusal`); `judge` keeps only the answers the validated judge
flags (score above eval.judge_threshold) and `is_refusal` does not.

The judge is the application's to build (the data layer imports no judge): it arrives as
an `AnswerJudge`. Its scores are cached beside the answers, one file per judge version,
so that every later build, and every rank of a multi-process run, reads the same verdicts
without loading the judge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Protocol

from antibody.config.errors import DataError
from antibody.config.schema import AnswerFilter
from antibody.data.sources.refusals import is_refusal, looks_like_refusal
from antibody.infra.files import atomic_write_text

KEY_CHARS = 16
DECLINED, NOT_HARMFUL = "declined", "not flagged harmful"


class AnswerJudge(Protocol):
    """What the `judge` filter needs of a harm judge: its version (the cache key) and the
    scores of (prompt, answer) pairs, flagged above `threshold`."""

    version: str
    threshold: float

    def scores(self, prompts: list[str], answers: list[str]) -> list[float]: ...


def answer_key(prompt: str, answer: str) -> str:
    """A (prompt, answer) pair's key: the verdict cache's, and the hand labels' of
    evaluation/judges/refusal_sets.py."""
    return hashlib.sha1(f"{prompt}\x00{answer}".encode()).hexdigest()[:KEY_CHARS]


def verdict_path(cache_dir: Path, version: str) -> Path:
    digest = hashlib.sha1(version.encode()).hexdigest()[:12]
    return Path(cache_dir) / "generated" / f"judged-{digest}.json"


def judged_scores(pairs: Sequence[tuple[str, str]], judge: Optional[AnswerJudge], version: str,
                  cache_dir: Path) -> list[float]:
    """The judge's score of each (prompt, answer), from the cache file of `version`; the
    pairs it lacks are scored by `judge` and added (atomically) to the file."""
    path = verdict_path(cache_dir, version)
    cached: dict[str, float] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            cached = {str(k): float(v) for k, v in doc["scores"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a verdict cache ({exc}); delete it to score the answers again") from None
    keys = [answer_key(p, a) for p, a in pairs]
    todo = [i for i, k in enumerate(keys) if k not in cached]
    if todo:
        if judge is None:
            raise DataError(
                f"{path}: the judge's verdicts on {len(todo)} model-written answers are not cached "
                f"(data.harmful_answer_filter=judge, judge {version}); fill the cache first with "
                "`python -m antibody build-data` and the same config overrides"
            )
        scores = judge.scores([pairs[i][0] for i in todo], [pairs[i][1] for i in todo])
        if len(scores) != len(todo):
            raise DataError(f"judge {version} returned {len(scores)} scores for {len(todo)} answers")
        cached.update({keys[i]: float(s) for i, s in zip(todo, scores, strict=True)})
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"judge": version, "scores": cached}, sort_keys=True) + "\n")
    return [cached[k] for k in keys]


def dropped_reasons(pairs: Sequence[tuple[str, str]], mode: AnswerFilter, *, judge: Optional[AnswerJudge] = None,
                    version: str = "", threshold: float = 0.5, cache_dir: Path = Path(".")) -> list[Optional[str]]:
    """Per (prompt, answer) of harmful prompts: why it is dropped (DECLINED, NOT_HARMFUL), or
    None when it is kept. An empty answer is declined in every mode."""
    if mode is AnswerFilter.KEYWORD:
        return [DECLINED if not a.strip() or looks_like_refusal(a) else None for _, a in pairs]
    out: list[Optional[str]] = [DECLINED if not a.strip() or is_refusal(a) else None for _, a in pairs]
    if mode is AnswerFilter.JUDGE:
        rest = [i for i, why in enumerate(out) if why is None]
        scores = judged_scores([pairs[i] for i in rest], judge, version, cache_dir) if rest else []
        for i, s in zip(rest, scores, strict=True):
            if not s > threshold:  # flagged strictly above, as the judges flag (judges/base.py)
                out[i] = NOT_HARMFUL
    return out
