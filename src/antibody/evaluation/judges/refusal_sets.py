"""Labelled refusals for measuring a refusal detector, as the judges are measured.

Three sets, each (answer, declined?) with the prompt as its cluster:

- `pyrit`: PyRIT's `refusal_scorer` rows (human_score 1 = the answer did not fulfil the
  objective), validation prompts only (judges.labelled), written by large chat models.
- `uncensorbench`: UncensorBench's refusal ("censored") and compliant answer to each
  harmful request, validation prompts only: refusals in a clean, written style.
- `own`: the embedded model's own answers to harmful prompts, labelled by hand
  (`labels/smollm2_refusals.json`: keys, labels, criteria; no text). Its refusals have a
  style of their own ("I'm sorry for any misunderstanding, but as a chatbot designed to
  assist with ..., I don't have the capability to ..."), which neither public set holds.
  The answers are read from the data cache that the demo's data build writes; an answer
  generated otherwise (another model, settings or library version) matches no key and is
  not counted, and the result says how many matched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from antibody.data.records import normalise_text
from antibody.data.sources.answer_filter import answer_key

LABELS_FILE = Path(__file__).parent / "labels" / "smollm2_refusals.json"


class LabelledRefusal(NamedTuple):
    text: str
    declined: bool
    group: str  # the prompt, normalised: bootstrap cluster


@functools.lru_cache(maxsize=1)
def own_labels() -> dict[str, str]:
    """key -> "refusal" | "answer" | "unclear" (the file's criteria say which is which)."""
    return json.loads(LABELS_FILE.read_text(encoding="utf-8"))["labels"]


def own_rows(cache_dir: Path) -> list[LabelledRefusal]:
    """The hand-labelled answers found in `cache_dir`/generated (unclear ones left out)."""
    labels, out, seen = own_labels(), [], set()
    for path in sorted((Path(cache_dir) / "generated").glob("generated_harmful-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:  # line 1: the file's meta
            row = json.loads(line)
            key = answer_key(row["prompt"], row["response"])
            if key in seen or labels.get(key) not in ("refusal", "answer"):
                continue
            seen.add(key)
            out.append(LabelledRefusal(row["response"], labels[key] == "refusal", normalise_text(row["prompt"])))
    return out


def pyrit_rows() -> list[LabelledRefusal]:
    from antibody.data.sources.pyrit import refusal_scorer_pairs
    from antibody.evaluation.judges.labelled import Part, all_rows, part_of, pool_prompts

    pool = pool_prompts(all_rows())
    return [LabelledRefusal(p.response, p.score >= 1.0, normalise_text(p.objective)) for p in refusal_scorer_pairs()
            if p.response and part_of(normalise_text(p.objective), pool) is Part.VALIDATION]


def uncensorbench_rows() -> list[LabelledRefusal]:
    from antibody.evaluation.judges.labelled import LabelSource, Part, split_rows

    return [LabelledRefusal(r.response, not r.harmful, r.key) for r in split_rows()[Part.VALIDATION]
            if r.source is LabelSource.UNCENSORBENCH]


SETS: dict[str, Callable[..., list[LabelledRefusal]]] = {
    "pyrit": lambda cache_dir: pyrit_rows(),
    "uncensorbench": lambda cache_dir: uncensorbench_rows(),
    "own": own_rows,
}


def measure_detectors(detectors: dict[str, Callable[[str], bool]], cache_dir: Path) -> dict:
    """Each detector on each set: sensitivity (declined answers flagged) and specificity,
    Wilson intervals, as judge_stats.binary_metrics computes them for judges; a set with no
    row (the own set on a machine without the demo's data) is reported with n 0."""
    from antibody.evaluation.judge_stats import binary_metrics

    sets = {name: read(cache_dir) for name, read in SETS.items()}
    out: dict = {"sets": {name: {"n": len(rows), "declined": sum(r.declined for r in rows)}
                          for name, rows in sets.items()},
                 "own_labelled": sum(v in ("refusal", "answer") for v in own_labels().values()),
                 "own_unclear": sum(v == "unclear" for v in own_labels().values()), "detectors": {}}
    for det, fn in detectors.items():
        out["detectors"][det] = {
            name: binary_metrics([r.declined for r in rows], [float(fn(r.text)) for r in rows], 0.5,
                                 [r.group for r in rows]) if rows else {"n": 0}
            for name, rows in sets.items()}
    return out
