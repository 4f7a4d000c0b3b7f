"""The demo's Markdown tables (one line per model, the paired comparisons) and the weight
summary of a weighted fine-tuning run: shared by `report` (the results pages' blocks) and the study
driver (study.report, study.models)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the types only: app/study imports this module
    from antibody.app.study.suite import ModelRow, SuiteResults


def row_source(row: dict) -> str:
    """The source of a `weights.jsonl` row; older weights files lack "source", and their uids
    are "<source>-<digest>" (make_uid)."""
    return row.get("source") or row["uid"].rsplit("-", 1)[0]


def weight_summary(rows: list[dict], batch_size: int) -> dict:
    """Mean per-row weight of harmful and benign rows x batch size (weights of one batch sum
    to 1, so 1.0 means "as much as under plain SFT"), from `weight_records()` rows."""
    harm: list[float] = []
    benign: list[float] = []
    by_source: dict[str, list[float]] = {}
    for r in rows:
        if r["is_harmful"]:
            harm.append(r["w"])
        else:
            benign.append(r["w"])
            by_source.setdefault(row_source(r), []).append(r["w"])
    return {
        "mean_weight_harmful_x_batch": batch_size * sum(harm) / len(harm) if harm else None,
        "mean_weight_benign_x_batch": batch_size * sum(benign) / len(benign) if benign else None,
        # benign rows per source: a weighting that also starves the user's task shows up here
        "benign_by_source": {k: {"mean_weight_x_batch": batch_size * sum(v) / len(v), "rows": len(v)}
                             for k, v in sorted(by_source.items())},
        # how the harmful rows' weight is spread: the share of them that kept at least half of a
        # uniform weight. Two runs with the same mean can differ here (a few rows at full weight
        # or many at a fraction), and at embedded scale HS followed this more than the mean
        # (docs/results/weighting-mechanism.md)
        "harmful_rows_at_least_half": (sum(batch_size * w >= 0.5 for w in harm) / len(harm)) if harm else None,
        "rows_seen": len(rows),
    }


def _rate(row: ModelRow, key: str) -> str:
    m = row.metrics.get(key)
    if m is None:
        return "-"
    return f"{100 * m['value']:.1f} ± {100 * m['stderr']:.1f}"


def _corrected(row: ModelRow) -> str:
    m = row.metrics.get("harmful/harmful_score_corrected")
    if m is None or m.get("value") is None:
        return "-"
    return f"{100 * m['value']:.1f} [{100 * m['ci95_low']:.1f}, {100 * m['ci95_high']:.1f}]"


def _judge_line(results: SuiteResults) -> str:
    """Which judge scored the table, and its errors on the labelled validation part."""
    j = results.judge
    v = (j or {}).get("validation")
    if not v:
        return ""
    return (f" Judge: {j['name']} ({j['version']}); on the {v['n']} labelled validation answers cut to "
            f"{v['answer_tokens']} tokens: sensitivity {v['sensitivity']['value']:.2f}, specificity "
            f"{v['specificity']['value']:.2f}, AUROC {v['auroc']['value']:.3f} (`python -m antibody judge-eval`). "
            "HS corrected: Rogan-Gladen (HS + spec - 1) / (sens + spec - 1), clipped to [0, 1], 95% interval "
            "carrying the evaluation's and the validation's sampling error; paired comparisons use raw verdicts.")


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _weights(summary: dict | None, task: str) -> str:
    """harmful / task / other benign rows, each as mean weight x batch size."""
    if not summary:
        return "-"
    by_source = summary.get("benign_by_source") or {}
    task_w = by_source.get(task, {}).get("mean_weight_x_batch")
    others = [v for k, v in by_source.items() if k != task]
    n_other = sum(v["rows"] for v in others)
    other = sum(v["mean_weight_x_batch"] * v["rows"] for v in others) / n_other if n_other else None
    return " / ".join([_num(summary.get("mean_weight_harmful_x_batch"), 2), _num(task_w, 2), _num(other, 2)])


def _aurocs(det: dict | None) -> str:
    if not det:
        return "-"
    keys = ("auroc_neg_ratio", "auroc_neg_logp_response", "auroc_logp_refusal")
    return " / ".join(_num(det.get(k), 2) for k in keys)


def _wall_time(results: SuiteResults) -> str:
    """The invocation that wrote results.json; a re-run that found every job cached says so
    by its short time, so the figure is reported as what it is."""
    seconds = results.demo_seconds_this_invocation
    if seconds is None:
        return ""
    trained = sum(r.train_seconds or 0 for r in results.rows)
    evals = sum(r.eval_seconds or 0 for r in results.rows)
    ran = ""
    if results.jobs_trained_this_invocation is not None:
        # training jobs (an alignment and a fine-tuning per model) and evaluated models are
        # different units: each count names its own, and only models have a total here
        trained_jobs = results.jobs_trained_this_invocation
        ran = (f" (it trained {trained_jobs} job{'' if trained_jobs == 1 else 's'} and evaluated "
               f"{results.jobs_evaluated_this_invocation} of {len(results.rows)} models; the rest were cached)")
    return (f" Wall time of the invocation that wrote it: {seconds / 60:.1f} min{ran}. Summed over jobs, "
            f"from each job's own metrics.json: training {trained / 60:.1f} min, evaluation {evals / 60:.1f} min.")


def markdown_table(results: SuiteResults) -> str:
    task = results.task
    sizes = results.eval_sizes
    lines = [
        f"Rates in %, ± one standard error; n = {sizes.get('harmful/harmful_score', '?')} harmful, "
        f"{sizes.get('benign/over_refusal', '?')} benign, {sizes.get(f'{task}/accuracy', '?')} {task} "
        "evaluation prompts, one seed. Weight x B: mean softmax weight of the upload's harmful "
        f"rows, {task} rows and other benign rows, times the batch size (1.00 = as under plain SFT). AUROCs: each weight term "
        "as a harmful-row detector over the fine-tuning run (analysis only: reads the tags). Refusal and "
        "over-refusal: answers the keyword detector (`is_refusal`) calls refusals; its sensitivity differs by "
        "refusal style (docs/results/judge-eval.md, refusal detectors). "
        "Generated by `python -m antibody report` from the demo's results file."
        + _judge_line(results) + _wall_time(results),
        "",
        f"| model | HS | HS corrected [95% CI] | HS+ (harmful or incoherent) | refusal (harmful) | over-refusal (benign) | FA ({task}) | "
        f"weight x B: harmful / {task} / other benign | "
        "AUROC -r / -log p(y) / log p(y_r) | train s | grad-norm@harm | loss drop@rho |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.rows:
        sh = r.sharpness or {}
        cells = [
            r.label or r.job,
            _rate(r, "harmful/harmful_score"),
            _corrected(r),
            _rate(r, "harmful/harmful_score_plus"),
            _rate(r, "harmful/refusal_rate"),
            _rate(r, "benign/over_refusal"),
            _rate(r, f"{task}/accuracy"),
            _weights(r.weights, task),
            _aurocs(r.detector),
            _num(r.train_seconds, 0),
            _num(sh.get("grad_norm"), 3),
            _num(sh.get("loss_drop"), 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(results: SuiteResults) -> str:
    """The demo's questions as paired differences on the same prompts (see
    antibody.evaluation.paired): A - B in points, its paired standard error, the prompts
    where only A / only B had the outcome, and the exact McNemar p-value."""
    comps = results.comparisons or []
    if not comps:
        return ""
    lines = [
        "Paired differences on the same evaluation prompts (A - B, in points, ± paired standard "
        "error; A-only / B-only: prompts where only one model had the outcome; p: exact McNemar, "
        "two-sided, not corrected for the number of comparisons).",
        "",
        "| question | metric | A | B | A - B | A-only / B-only | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comps:
        lines.append(
            f"| {c['question']} | {c['metric']} | {c['a']} {100 * c['rate_a']:.1f} | {c['b']} "
            f"{100 * c['rate_b']:.1f} | {100 * c['diff']:+.1f} ± {100 * c['stderr']:.1f} | "
            f"{c['a_only']} / {c['b_only']} | {c['p_value']:.3g} |"
        )
    return "\n".join(lines)
