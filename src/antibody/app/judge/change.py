"""How a demo's Harmful Scores and their paired differences read under every judge that has
scored its answers.

A predictions row keeps each judge's raw score (`scores_by_judge`, antibody.evaluation.
scoring), so a change of judge is compared on the very same answers: per model, the HS
under each judge; per HS comparison of the demo, the paired difference and its exact
McNemar p-value under each judge. Only judges that scored every job's answers are shown.
"""

from __future__ import annotations

import re
from pathlib import Path

from antibody.config.errors import DataError
from antibody.evaluation.evaluator import read_predictions
from antibody.evaluation.paired import paired_difference

HARMFUL = "harmful"


def _verdicts(rows: list[dict], judge: str, threshold: float) -> dict[str, bool]:
    return {r["uid"]: float(r["scores_by_judge"][judge]) > threshold for r in rows}


def hs_by_judge(root: Path, jobs: list[str], comparisons: list[dict], threshold: float) -> dict:
    """{"judges": [...], "hs": {job: {judge: rate}}, "comparisons": [{question, a, b, by_judge}]}
    for the HS comparisons among ``comparisons`` (the demo's, as results.json holds them)."""
    preds = {job: read_predictions(root / job / "eval" / "predictions" / f"{HARMFUL}.jsonl", repair=False)
             for job in jobs}
    judges: set[str] | None = None
    for job, rows in preds.items():
        if not rows:
            raise DataError(f"{root / job}: no harmful-task predictions; run `eval` for that job first")
        for row in rows:
            have = set(row.get("scores_by_judge") or {})
            judges = have if judges is None else judges & have
    order = sorted(judges or ())
    out: dict = {"judges": order, "threshold": threshold, "hs": {}, "comparisons": []}
    if not order:
        return out
    verdicts = {job: {j: _verdicts(rows, j, threshold) for j in order} for job, rows in preds.items()}
    for job in jobs:
        out["hs"][job] = {j: sum(v.values()) / len(v) for j, v in verdicts[job].items()}
    for c in comparisons:
        if c["metric"] != f"{HARMFUL}/harmful_score":
            continue
        by_judge = {}
        for j in order:
            a, b = verdicts[c["a"]][j], verdicts[c["b"]][j]
            uids = sorted(a)
            diff = paired_difference([a[u] for u in uids], [b[u] for u in uids])
            by_judge[j] = {"diff": diff.diff, "stderr": diff.stderr, "p_value": diff.p_value}
        out["comparisons"].append({"question": c["question"], "a": c["a"], "b": c["b"], "by_judge": by_judge})
    return out


def short(judge: str) -> str:
    """`probe:probe-v1-smollm2-...-33f6` -> `probe probe-v1`; `tfidf:lr-v1-82d4` -> `tfidf lr-v1`
    (the judge and its code version, without the data digest)."""
    name, _, version = judge.partition(":")
    m = re.match(r"^(.*?-v\d+)", version)
    return f"{name} {m.group(1)}" if m else name


def judge_change_table(by_judge: dict) -> str:
    order = by_judge.get("judges") or []
    if len(order) < 2:
        return ""
    names = [short(j) for j in order]
    lines = ["The same answers under every judge that scored them (HS in %, paired differences in "
             "points ± paired standard error, exact McNemar p):", "",
             "| model | " + " | ".join(f"HS {n}" for n in names) + " |", "|---|" + "---|" * len(order)]
    for job, hs in by_judge["hs"].items():
        lines.append(f"| {job} | " + " | ".join(f"{100 * hs[j]:.1f}" for j in order) + " |")
    lines += ["", "| question | " + " | ".join(f"A - B {n}" for n in names) + " |", "|---|" + "---|" * len(order)]
    for c in by_judge["comparisons"]:
        cells = [f"{100 * c['by_judge'][j]['diff']:+.1f} ± {100 * c['by_judge'][j]['stderr']:.1f} "
                 f"(p {c['by_judge'][j]['p_value']:.2g})" for j in order]
        lines.append(f"| {c['question']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
