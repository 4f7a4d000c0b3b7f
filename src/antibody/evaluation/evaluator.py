"""Run the evaluation tasks on a model: generate, judge, extract, score; resumable.

For each task, answers are streamed to `out_dir/predictions/<task>.jsonl` (one JSON row
per prompt, flushed and fsynced per batch). A killed evaluation resumes: rows already in
the file are kept and not regenerated; a truncated last line (the kill hit a write) is
dropped and redone. Each row records the settings it was generated under
(`generation_settings`), and a file written under others is refused, not mixed. Metrics are
computed from the file, so a resumed run scores exactly
what an uninterrupted one would, and written to `out_dir/metrics.json` with each task's
version and the judge's name, version and report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from antibody.config.compose import to_container
from antibody.config.errors import DataError
from antibody.config.schema import Config
from antibody.data.formatting import format_prompt, user_message
from antibody.data.records import Record
from antibody.evaluation import metrics as M
from antibody.evaluation.extractors import EXTRACTORS
from antibody.evaluation.generation import generate
from antibody.evaluation.incoherence import LossIncoherence
from antibody.evaluation.judge_stats import corrected_rate
from antibody.evaluation.judges.base import Judge
from antibody.evaluation.judges.keyword import is_refusal
from antibody.evaluation.scoring import RowScorer
from antibody.evaluation.tasks import EvalTask, MetricKind, get_task
from antibody.infra import progress as progress_bars
from antibody.infra.files import append_jsonl, atomic_write_json, atomic_write_jsonl
from antibody.models.precision import BF16_MIXED, inference_autocast

Progress = Callable[[str, int, int], None]  # (task, rows done, rows total)


# ---------------------------------------------------------------------------
# Predictions file
# ---------------------------------------------------------------------------


def read_predictions(path: Path, repair: bool = True) -> list[dict]:
    """Rows of a predictions file.

    Rows are written whole, newline-terminated, so a kill can only leave a partial LAST
    line (no newline): it is dropped and, with `repair`, cut from the file so that appends
    start on a clean line. A newline-terminated line that is not a JSON object is an error
    naming the file and line.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    if tail and repair:
        with open(path, "r+b") as fh:
            fh.truncate(len(data) - len(tail))
    rows: list[dict] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: malformed predictions row ({exc}); "
                            "delete the file to regenerate this task") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def generation_settings(cfg: Config, task: EvalTask) -> dict:
    """What an answer depends on besides its prompt and the weights, stored in every row: a
    predictions file resumed under other settings (the base model's `base-<model>/` folder is
    shared by every evaluation of it in one output dir) would otherwise mix answers of two
    generations, e.g. fp32 answers under a bf16-mixed run's name."""
    return {"autocast_bf16": cfg.trainer.precision in BF16_MIXED,
            "attn_implementation": cfg.model.attn_implementation,
            "max_new_tokens": task.resolve_max_new_tokens(cfg)}


def _check_resumable(rows: list[dict], path: Path, records: dict[str, Record], task: EvalTask,
                     settings: dict) -> None:
    seen: set[str] = set()
    for i, row in enumerate(rows, start=1):
        uid = row.get("uid")
        if uid not in records:
            raise DataError(f"{path}:{i}: uid {uid!r} is not among this evaluation's {task.name.value} "
                            "records; use a fresh out_dir or delete the file")
        if uid in seen:
            raise DataError(f"{path}:{i}: uid {uid!r} appears twice")
        seen.add(uid)
        if row.get("task_version") != task.version:
            raise DataError(f"{path}:{i}: written by task version {row.get('task_version')!r}, now "
                            f"{task.version!r}; delete the file to regenerate")
        # rows written before the settings were stored (2026-12-08) carry none and are kept
        if "generation" in row and row["generation"] != settings:
            raise DataError(f"{path}:{i}: answer generated under {row['generation']}, this evaluation "
                            f"generates under {settings}; use another run.output_dir or delete the file")


# ---------------------------------------------------------------------------
# Rows and metrics
# ---------------------------------------------------------------------------


def _make_rows(task: EvalTask, batch: list[Record], prompts: list[str], responses: list[str],
               scorer: RowScorer, settings: dict) -> list[dict]:
    questions = [user_message(r) for r in batch]  # the judge sees the question, not the template
    rows = []
    for rec, prompt, question, response in zip(batch, prompts, questions, responses, strict=True):
        extracted, correct = None, None
        if task.extractor is not None:
            if rec.target is None:
                raise DataError(f"record {rec.uid} of task {task.name.value} has no target to score against")
            ex = EXTRACTORS[task.extractor]
            extracted = ex.extract(response, task.labels)
            correct = ex.matches(extracted, rec.target)
        rows.append({
            "uid": rec.uid, "task": task.name.value, "task_version": task.version,
            "source": rec.source, "category": rec.category, "is_harmful": rec.is_harmful,
            "question": question, "prompt": prompt, "response": response,
            "judge": None, "judge_score": None, "verdict": None,
            "refusal": is_refusal(response), "incoherent": M.is_incoherent(response),
            "target": rec.target, "extracted": extracted, "correct": correct, "generation": settings,
        })
    if task.uses_judge:
        scorer.score(rows)
    return rows


def _harm_metrics(rows: list[dict], judge: Judge, threshold: float) -> list[M.RateResult]:
    # Verdicts are recomputed from the stored raw scores with the current threshold; the
    # incoherence flags are the scorer's (Booster's repeat rule, or it or the loss signal).
    flags = judge.flag([r["judge_score"] for r in rows], threshold)
    return [M.harmful_score(flags),
            M.rate("harmful_score_plus", [f or bool(r["incoherent"]) for f, r in zip(flags, rows, strict=True)]),
            M.refusal_rate([is_refusal(r["response"]) for r in rows])]


def _over_refusal_metrics(rows: list[dict], judge: Judge, threshold: float) -> list[M.RateResult]:
    return [M.over_refusal([is_refusal(r["response"]) for r in rows])]


def _accuracy_metrics(rows: list[dict], judge: Judge, threshold: float) -> list[M.RateResult]:
    return [M.accuracy([bool(r["correct"]) for r in rows])]


METRIC_FNS: dict[MetricKind, Callable[[list[dict], Judge, float], list[M.RateResult]]] = {
    MetricKind.HARM: _harm_metrics,
    MetricKind.OVER_REFUSAL: _over_refusal_metrics,
    MetricKind.ACCURACY: _accuracy_metrics,
    MetricKind.WIN_RATE: lambda rows, judge, threshold: [],  # pairwise: `_win_rate` below
}


def _win_rate(task: EvalTask, rows: list[dict], cfg: Config, out_dir: Path, pairwise) -> dict:
    """AlpacaEval: the generations in alpaca_eval's input format, and the win rate against the
    reference answers under the local pairwise judge when one is configured."""
    from antibody.evaluation.judges.pairwise import win_rate as rate_of
    from antibody.evaluation.judges.pairwise import write_alpaca_outputs

    path = write_alpaca_outputs(rows, cfg.run.name, out_dir)
    out = {"outputs": str(path), "command": f"alpaca_eval --model_outputs {path}"}
    if pairwise is not None:
        outcomes = pairwise.outcomes([r["question"] for r in rows], [r["response"] for r in rows],
                                     [r["target"] for r in rows])
        out[f"{task.name.value}/win_rate"] = dict(rate_of(outcomes), judge=pairwise.path)
    else:
        print(f"[antibody] AlpacaEval generations: {path}; score them with `{out['command']}` "
              "(or set eval.pairwise_judge_path for a local win rate)")
    return out


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def evaluate_task(model, tokenizer, task: EvalTask, records: list[Record], cfg: Config, out_dir: Path,
                  scorer: RowScorer, progress: Optional[Progress] = None) -> tuple[list[dict], int]:
    """Generate what is missing from the task's predictions file; returns (rows in record
    order, number of rows generated now)."""
    by_uid: dict[str, Record] = {}
    for rec in records:
        if rec.uid in by_uid:
            raise DataError(f"task {task.name.value}: duplicate record uid {rec.uid!r}")
        by_uid[rec.uid] = rec
    path = Path(out_dir) / "predictions" / f"{task.name.value}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = read_predictions(path)
    settings = generation_settings(cfg, task)
    _check_resumable(existing, path, by_uid, task, settings)
    if task.uses_judge and scorer.refresh(existing):
        # answers judged by another judge or rule: judged again, never regenerated
        atomic_write_jsonl(path, existing)
    done = {row["uid"]: row for row in existing}
    fmt = task.resolve_prompt_format(cfg)
    todo = [(rec, format_prompt(rec, tokenizer, fmt)) for rec in records if rec.uid not in done]
    # longest prompts first, so that each batch holds prompts of similar length and pads
    # little (generation.generate sorts only within the batch it is given); greedy answers
    # do not depend on the batch a prompt is in (tests/test_evaluator.py)
    lengths = [len(ids) for ids in tokenizer([p for _, p in todo], add_special_tokens=False)["input_ids"]] if todo else []
    todo = [todo[i] for i in sorted(range(len(todo)), key=lambda i: -lengths[i])]
    max_new = task.resolve_max_new_tokens(cfg)
    bs = cfg.eval.batch_size
    with progress_bars.task(f"eval {task.name.value}", total=len(records)) as bar:
        bar.update(completed=len(done))  # rows a killed run already wrote
        for start in range(0, len(todo), bs):
            batch = [rec for rec, _ in todo[start:start + bs]]
            prompts = [prompt for _, prompt in todo[start:start + bs]]
            # the evaluated model generates in the precision its run trained in
            # (models/precision.py); the judge stays in the precision it was validated in (fp32)
            with inference_autocast(cfg.trainer.precision, model):
                responses = generate(model, tokenizer, prompts, max_new_tokens=max_new, batch_size=bs)
            new_rows = _make_rows(task, batch, prompts, responses, scorer, settings)
            append_jsonl(path, new_rows)  # fsynced per batch: a kill loses at most this batch
            done.update((row["uid"], row) for row in new_rows)
            bar.update(completed=len(done))
            if progress is not None:
                progress(task.name.value, len(done), len(records))
    return [done[rec.uid] for rec in records], len(todo)


def corrected_harmful_score(hs: dict, validation: dict) -> dict:
    """Rogan-Gladen correction of the Harmful Score for the judge's validation errors."""
    out = corrected_rate(hs["k"], hs["n"], validation["tp"], validation["n_pos"], validation["tn"],
                         validation["n_neg"])
    return dict(out, name="harmful_score_corrected",
                percent=None if out["value"] is None else 100.0 * out["value"],
                validation=f"{validation['judge']} at {validation['answer_tokens']} answer tokens")


def evaluate(model, tokenizer, records_by_task: dict[str, list[Record]], cfg: Config, out_dir: Path,
             judge: Judge, progress: Optional[Progress] = None, *, loss: Optional[LossIncoherence] = None,
             validation: Optional[dict] = None, pairwise=None) -> dict:
    """Evaluate every task in `records_by_task` (keys: `EvalTaskName` values) and write
    `out_dir/metrics.json` (with `eval_seconds`, the wall time of this call); returns the same dict.

    loss: the loss-based incoherence signal for HS+ (None: Booster's repeat rule only).
    validation: the judge's validation counts (`judges.validation.judge_validation`); with
    them the harmful task also reports `harmful_score_corrected`.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    threshold = cfg.eval.judge_threshold
    scorer = RowScorer(judge, threshold, loss)
    result: dict = {"metrics": {}, "tasks": {},
                    "judge": {"name": judge.name, "version": judge.version, "threshold": threshold,
                              "report": judge.report(), "validation": validation, **scorer.report()},
                    "model": to_container(cfg.model), "run": cfg.run.name}
    for name, records in records_by_task.items():
        task = get_task(name)
        if not records:
            raise DataError(f"task {task.name.value}: no records to evaluate")
        rows, generated = evaluate_task(model, tokenizer, task, records, cfg, out_dir, scorer, progress)
        scores = METRIC_FNS[task.metric](rows, judge, threshold)
        for res in scores:
            result["metrics"][f"{task.name.value}/{res.name}"] = res.to_dict()
        if task.metric is MetricKind.WIN_RATE:
            alpaca = _win_rate(task, rows, cfg, out_dir, pairwise)
            result["alpaca_eval"] = {k: v for k, v in alpaca.items() if "/" not in k}
            result["metrics"].update({k: v for k, v in alpaca.items() if "/" in k})
        if task.metric is MetricKind.HARM and validation is not None:
            hs = result["metrics"][f"{task.name.value}/harmful_score"]
            result["metrics"][f"{task.name.value}/harmful_score_corrected"] = corrected_harmful_score(hs, validation)
        result["tasks"][task.name.value] = dict(task.describe(cfg), n=len(rows),
                                               generated_this_run=generated,
                                               predictions=str(Path("predictions") / f"{task.name.value}.jsonl"))
    result["eval_seconds"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "metrics.json", result)
    return result
