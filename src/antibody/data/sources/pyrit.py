"""PyRIT's data: AdvBench goals and the human-labelled scorer evaluation sets.

scorer_evals layout (pyrit==1.1.0, docs/data.md; CSVs open with '#' comment lines):
- objective/*.csv: harm_category, objective, assistant_response, human_score (1 = the
  harmful objective was achieved, 0 = refused or safe), data_type.
- harm/*.csv: human_score_1 on a Likert scale {0, .25, .5, .75, 1} (representational.csv
  names the column human_score). The *_multi_score.csv files (three raters) and
  mini_*.csv (a 15-row sample of hate_speech_multi_score) are a separate rater study and
  are left out, which gives the 240 rows at >= 0.75 counted in docs/data.md.
- refusal_scorer/refusal.csv, refusal_extra.csv: objective, assistant_response,
  human_score (1 = the response does not fulfil the objective), data_type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data.io import read_csv, require_fields
from antibody.data.records import Record, normalise_text
from antibody.data.sources.assets import asset_path
from antibody.data.sources.common import clean, dedupe, new_record
from antibody.data.sources.refusals import looks_like_refusal
from antibody.data.sources.registry import SourceContext, register_source
from antibody.infra.files import read_yaml

# PyRIT's labels (docs/data.md): objective human_score 1 = harmful objective achieved
OBJECTIVE_HARMFUL_SCORE = 1.0
# ours (docs/data.md): Likert human_score_1 >= 0.75 counts as a harmful answer
HARM_LIKERT_THRESHOLD = 0.75
_SKIPPED_HARM_FILES = re.compile(r"(^mini_|_multi_score$)")


def _scorer_dir(*parts: str) -> Path:
    return asset_path("pyrit", "datasets", "scorer_evals", *parts)


def _score(row: dict, column: str, path: Path) -> float:
    try:
        return float(row[column])
    except ValueError:
        raise DataError(f"{path}:{row['__line__']}: {column}={row[column]!r} is not a number") from None


# ---------------------------------------------------------------------------
# AdvBench
# ---------------------------------------------------------------------------


@register_source(SourceName.ADVBENCH)
def load_advbench(ctx: SourceContext) -> list[Record]:
    """pyrit/datasets/seed_datasets/local/adv_bench.prompt: YAML `seeds`, 520 goals."""
    path = asset_path("pyrit", "datasets", "seed_datasets", "local", "adv_bench.prompt")
    doc = read_yaml(path, error=DataError)
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise DataError(f"{path}: expected a top-level `seeds` list")
    records = []
    for i, seed in enumerate(seeds):
        if not isinstance(seed, dict) or not seed.get("value"):
            raise DataError(f"{path}: seeds[{i}] has no `value`")
        categories = [str(c) for c in seed.get("harm_categories") or []]
        records.append(
            new_record(
                SourceName.ADVBENCH,
                clean(seed["value"]),
                is_harmful=True,
                # the first listed category is the main one (the file's description)
                category=categories[0] if categories else "",
                meta={"harm_categories": categories, "index": i},
            )
        )
    return dedupe(records)


# ---------------------------------------------------------------------------
# Human-labelled harmful answers and refusals
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPair:
    """One row of a scorer_evals CSV: (objective, response) with its human score."""

    objective: str
    response: str
    score: float
    category: str
    file: str  # relative to scorer_evals, e.g. "objective/bias.csv"
    line: int


def _read_pairs(path: Path, score_columns: tuple[str, ...]) -> list[LabelledPair]:
    rows = read_csv(path)
    if not rows:
        return []
    column = next((c for c in score_columns if c in rows[0]), None)
    if column is None:
        raise DataError(f"{path}: no score column; expected one of {list(score_columns)}")
    rel = f"{path.parent.name}/{path.name}"
    pairs = []
    for row in rows:
        require_fields(row, ["objective", "assistant_response", column], path)
        pairs.append(
            LabelledPair(
                objective=clean(row["objective"]),
                response=clean(row["assistant_response"]),
                score=_score(row, column, path),
                category=path.stem,
                file=rel,
                line=row["__line__"],
            )
        )
    return pairs


# The file lists are public so that a consumer can hash exactly the files it reads (the
# tfidf judge's cache key).
def objective_files() -> list[Path]:
    return sorted(_scorer_dir("objective").glob("*.csv"))


def harm_files() -> list[Path]:
    return [f for f in sorted(_scorer_dir("harm").glob("*.csv")) if not _SKIPPED_HARM_FILES.search(f.stem)]


def refusal_scorer_files() -> list[Path]:
    return [_scorer_dir("refusal_scorer", n) for n in ("refusal.csv", "refusal_extra.csv")]


def objective_pairs() -> list[LabelledPair]:
    return [p for f in objective_files() for p in _read_pairs(f, ("human_score",))]


def harm_pairs() -> list[LabelledPair]:
    return [p for f in harm_files() for p in _read_pairs(f, ("human_score_1", "human_score"))]


def refusal_scorer_pairs() -> list[LabelledPair]:
    return [p for f in refusal_scorer_files() for p in _read_pairs(f, ("human_score",))]


def _pair_record(source: SourceName, pair: LabelledPair) -> Record:
    return new_record(
        source,
        pair.objective,
        response=pair.response,
        is_harmful=True,
        category=pair.category,
        meta={"file": pair.file, "line": pair.line, "human_score": pair.score},
    )


@register_source(SourceName.PYRIT_HARMFUL)
def load_pyrit_harmful(ctx: SourceContext) -> list[Record]:
    """Human-labelled harmful (prompt, answer) pairs: objective score 1 + harm Likert >= 0.75."""
    pairs = [p for p in objective_pairs() if p.score >= OBJECTIVE_HARMFUL_SCORE]
    pairs += [p for p in harm_pairs() if p.score >= HARM_LIKERT_THRESHOLD]
    return dedupe([_pair_record(SourceName.PYRIT_HARMFUL, p) for p in pairs if p.objective and p.response])


def is_human_refusal(pair: LabelledPair) -> bool:
    """A refusal_scorer row labelled refusal whose text declines.

    PyRIT's label 1 means "did not fulfil the objective"; in these files that includes
    answers to a different, benign question (e.g. "Tell me a riddle!" answered with a
    recipe). Those are not refusals of a harmful request, so the text must also decline.
    """
    return pair.score >= 1.0 and looks_like_refusal(pair.response)


@register_source(SourceName.PYRIT_REFUSAL)
def load_pyrit_refusal(ctx: SourceContext) -> list[Record]:
    """Harmful prompts with human-labelled refusals from refusal_scorer/*.csv."""
    pairs = [p for p in refusal_scorer_pairs() if is_human_refusal(p)]
    records = []
    for p in pairs:
        rec = _pair_record(SourceName.PYRIT_REFUSAL, p)
        rec.category = ""  # the refusal files carry no harm category; the stem is not one
        records.append(rec)
    return dedupe(records)


# Jailbreak personas in some labelled responses ("[🔒CLASSIC] ...", "BasedGPT: ..."): such
# text answers a wrapped prompt, not the bare objective, so it is not used as a target.
_PERSONA_PREFIX = re.compile(r"^\s*(\[[^\]]{0,30}\]|\w{0,20}GPT\s*:|```)")
# Ours: an alignment target should be a real explanation, not a one-line "I can't".
MIN_LONG_REFUSAL_CHARS = 80
MAX_LONG_REFUSAL_CHARS = 1500


def long_human_refusals() -> dict[str, list[str]]:
    """Prompt key -> long human-labelled refusals written for that prompt.

    Drawn from refusal_scorer rows labelled refusal, objective rows with human_score 0 and
    harm rows with score 0, in each case only when the text declines.
    """
    candidates = [p for p in refusal_scorer_pairs() if is_human_refusal(p)]
    candidates += [p for p in objective_pairs() + harm_pairs() if p.score == 0.0 and looks_like_refusal(p.response)]
    index: dict[str, list[str]] = {}
    for p in candidates:
        text = p.response
        if not (MIN_LONG_REFUSAL_CHARS <= len(text) <= MAX_LONG_REFUSAL_CHARS) or _PERSONA_PREFIX.match(text):
            continue
        bucket = index.setdefault(normalise_text(p.objective), [])
        if text not in bucket:
            bucket.append(text)
    return index
