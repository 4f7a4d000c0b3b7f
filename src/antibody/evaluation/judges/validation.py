"""Every judge measured the same way: its scores on the validation part of the labelled data.

A judge's raw scores on the validation rows are cached per (judge, version, label data,
answer length) under `<cache>/judges/validation/`, so that a threshold change or a second
evaluation costs nothing, and so that a GPU judge (beaver-dam-7b) measured once by
`judge-eval` is available to every later evaluation for the corrected Harmful Score.

Answer length: our evaluations cut answers at `max_new_tokens` (40-64 tokens at embedded
scale) while the labelled answers run to hundreds of tokens; a judge is validated on the
labelled answers cut to the evaluation's length (the evaluated model's tokenizer), the
regime whose errors the correction must undo. `answer_tokens=None` keeps them whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from antibody.evaluation.judge_stats import binary_metrics
from antibody.evaluation.judges.base import Judge, judge_id
from antibody.evaluation.judges.encoder import cut_answer
from antibody.evaluation.judges.labelled import LabelledResponse, Part, data_digest, split_rows
from antibody.infra import progress
from antibody.infra.files import atomic_write_json

SCORE_BATCH = 64  # rows per judge call (a progress step)


def validation_rows() -> list[LabelledResponse]:
    return split_rows()[Part.VALIDATION]


def _cache_path(cache_dir: Path, judge: Judge, answer_tokens: Optional[int], tokenizer) -> Path:
    # the tokenizer's folder name, not its path: the same tokenizer in another cache folder
    # counts the same tokens
    tok = Path(getattr(tokenizer, "name_or_path", "")).name if answer_tokens is not None else ""
    ident = f"{judge_id(judge)}|{data_digest()}|{answer_tokens}|{tok}"
    digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return Path(cache_dir) / "judges" / "validation" / f"{judge.name}-{digest}.json"


def validation_scores(judge: Judge, cache_dir: Path, *, answer_tokens: Optional[int] = None,
                      tokenizer=None) -> list[dict]:
    """One dict per validation row: source, prompt key, label, the (cut) response and the
    judge's raw score; cached (see the module docstring)."""
    if answer_tokens is not None and tokenizer is None:
        raise ValueError("answer_tokens needs the tokenizer that counts them")
    path = _cache_path(cache_dir, judge, answer_tokens, tokenizer)
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("judge") == judge_id(judge):
            return cached["rows"]
    rows = validation_rows()
    responses = [r.response if answer_tokens is None else cut_answer(tokenizer, r.response, answer_tokens)
                 for r in rows]
    scores: list[float] = []
    with progress.task(f"validating judge {judge.name}", total=len(rows)) as bar:
        for start in range(0, len(rows), SCORE_BATCH):
            chunk = slice(start, start + SCORE_BATCH)
            scores += judge.score([r.prompt for r in rows[chunk]], responses[chunk])
            bar.update(completed=len(scores))
    out = [{"source": r.source.value, "key": r.key, "harmful": r.harmful, "origin": r.origin,
            "response": resp, "score": float(s)} for r, resp, s in zip(rows, responses, scores, strict=True)]
    atomic_write_json(path, {"judge": judge_id(judge), "answer_tokens": answer_tokens, "rows": out})
    return out


def measure(rows: list[dict], threshold: float, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """binary_metrics over all validation rows and per source (clustered by prompt)."""
    def stats(subset: list[dict]) -> dict:
        return binary_metrics([r["harmful"] for r in subset], [r["score"] for r in subset], threshold,
                              [r["key"] for r in subset], n_boot=n_boot, seed=seed)

    sources = sorted({r["source"] for r in rows})
    return {"overall": stats(rows),
            "by_source": {s: stats([r for r in rows if r["source"] == s]) for s in sources}}


def judge_validation(judge: Judge, cache_dir: Path, threshold: float, *, answer_tokens: Optional[int],
                     tokenizer) -> dict:
    """What an evaluation records about its judge: the validation counts at its threshold
    (for the corrected Harmful Score) and the headline statistics."""
    rows = validation_scores(judge, cache_dir, answer_tokens=answer_tokens, tokenizer=tokenizer)
    overall = measure(rows, threshold, n_boot=500)["overall"]
    keep = ("n", "n_pos", "n_neg", "n_groups", "tp", "fp", "tn", "fn", "sensitivity", "specificity",
            "precision", "accuracy", "auroc", "youden_j", "threshold")
    return dict({k: overall[k] for k in keep if k in overall}, answer_tokens=answer_tokens,
                data=data_digest(), judge=judge_id(judge))
