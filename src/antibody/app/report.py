"""`report`: render a demo's results.json or the bench's bench.json as Markdown into the README.

    python -m antibody report runs/demo/results.json [README.md]
    python -m antibody report runs/bench/bench.json [README.md]

The table lives between two markers (one pair per demo suite and one for the bench, see
``block_name``), so the README's numbers are always the ones a program wrote, never typed
by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

from antibody.config import ConfigError


def block_name(results: dict) -> str:
    """README block of a results file: `demo-results` for the main suite, `demo-<suite>-results`
    for another (e.g. the controls), so each suite's table has its own place;
    `bench-<model>-results` for the bench (its file says `"kind": "bench"`), one per model
    (the README shows the tiny and the embedded model)."""
    if results.get("kind") == "bench":
        return f"bench-{results['model']}-results"
    if results.get("kind") == "judge-eval":
        return "judge-eval-results"
    suite = results.get("suite", "main")
    return "demo-results" if suite == "main" else f"demo-{suite}-results"


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
            # older weights files lack "source"; uids are "<source>-<digest>" (make_uid)
            by_source.setdefault(r.get("source") or r["uid"].rsplit("-", 1)[0], []).append(r["w"])
    return {
        "mean_weight_harmful_x_batch": batch_size * sum(harm) / len(harm) if harm else None,
        "mean_weight_benign_x_batch": batch_size * sum(benign) / len(benign) if benign else None,
        # benign rows per source: a weighting that also starves the user's task shows up here
        "benign_by_source": {k: {"mean_weight_x_batch": batch_size * sum(v) / len(v), "rows": len(v)}
                             for k, v in sorted(by_source.items())},
        "rows_seen": len(rows),
    }


def _rate(row: dict, key: str) -> str:
    m = row["metrics"].get(key)
    if m is None:
        return "-"
    return f"{100 * m['value']:.1f} ± {100 * m['stderr']:.1f}"


def _corrected(row: dict) -> str:
    m = row["metrics"].get("harmful/harmful_score_corrected")
    if m is None or m.get("value") is None:
        return "-"
    return f"{100 * m['value']:.1f} [{100 * m['ci95_low']:.1f}, {100 * m['ci95_high']:.1f}]"


def _judge_line(results: dict) -> str:
    """Which judge scored the table, and its errors on the labelled validation part."""
    j = results.get("judge")
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


def _wall_time(results: dict) -> str:
    """The invocation that wrote results.json; a re-run that found every job cached says so
    by its short time, so the figure is reported as what it is."""
    seconds = results.get("demo_seconds_this_invocation")
    if seconds is None:
        return ""
    trained = sum(r.get("train_seconds") or 0 for r in results["rows"])
    evals = sum(r.get("eval_seconds") or 0 for r in results["rows"])
    ran = ""
    if "jobs_trained_this_invocation" in results:
        ran = (f" (it trained {results['jobs_trained_this_invocation']} and evaluated "
               f"{results['jobs_evaluated_this_invocation']} of {len(results['rows'])} jobs; the rest were cached)")
    return (f" Wall time of the invocation that wrote it: {seconds / 60:.1f} min{ran}. Summed over jobs, "
            f"from each job's own metrics.json: training {trained / 60:.1f} min, evaluation {evals / 60:.1f} min.")


def markdown_table(results: dict) -> str:
    task = results["task"]
    sizes = results.get("eval_sizes", {})
    lines = [
        f"Rates in %, ± one standard error; n = {sizes.get('harmful/harmful_score', '?')} harmful, "
        f"{sizes.get('benign/over_refusal', '?')} benign, {sizes.get(f'{task}/accuracy', '?')} {task} "
        "evaluation prompts, one seed. Weight x B: mean softmax weight of the upload's harmful "
        f"rows, {task} rows and other benign rows, times the batch size (1.00 = as under plain SFT). AUROCs: each weight term "
        "as a harmful-row detector over the fine-tuning run (analysis only: reads the tags). "
        "Generated by `python -m antibody report` from the demo's results file."
        + _judge_line(results) + _wall_time(results),
        "",
        f"| model | HS | HS corrected [95% CI] | HS+ (harmful or incoherent) | refusal (harmful) | over-refusal (benign) | FA ({task}) | "
        f"weight x B: harmful / {task} / other benign | "
        "AUROC -r / -log p(y) / log p(y_r) | train s | grad-norm@harm | loss drop@rho |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        sh = r.get("sharpness") or {}
        cells = [
            r["label"],
            _rate(r, "harmful/harmful_score"),
            _corrected(r),
            _rate(r, "harmful/harmful_score_plus"),
            _rate(r, "harmful/refusal_rate"),
            _rate(r, "benign/over_refusal"),
            _rate(r, f"{task}/accuracy"),
            _weights(r.get("weights"), task),
            _aurocs(r.get("detector")),
            _num(r.get("train_seconds"), 0),
            _num(sh.get("grad_norm"), 3),
            _num(sh.get("loss_drop"), 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(results: dict) -> str:
    """The demo's questions as paired differences on the same prompts (see
    antibody.evaluation.paired): A - B in points, its paired standard error, the prompts
    where only A / only B had the outcome, and the exact McNemar p-value."""
    comps = results.get("comparisons") or []
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


def _ratio_cell(value, spread=None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def _memory_cells(mem: dict | None) -> list[str]:
    if not mem or mem.get("peak_mib") is None:
        return ["-", "-"]
    return [f"{mem['peak_mib']:.0f} ({_ratio_cell(mem.get('peak_ratio'))})",
            f"{mem['over_load_mib']:.0f} ({_ratio_cell(mem.get('over_load_ratio'))})"]


_MEMORY_KINDS = {
    "cpu_rss": "peak resident set size during the fit",
    "cuda_max_allocated": "peak CUDA memory allocated during the fit",
}


def bench_table(results: dict) -> str:
    """The bench's costs (antibody.app.bench): per stage and method, measured against the
    pass-count expectation, every figure a ratio to SFT of the same stage."""
    p, b = results["protocol"], results["batch_size"]
    kinds = {(m.get("memory") or {}).get("kind") for s in results["stages"].values() for m in s["methods"].values()}
    memory = "; ".join(_MEMORY_KINDS[k] for k in sorted(k for k in kinds if k)) or "not measured"
    lines = [
        f"Model {results['model']} on {results['device']} ({results['precision']}, {results['torch_threads']} "
        f"torch threads, {results['cpu_count']} CPUs); batch {b['align']} alignment + {b['harmful']} harmful "
        f"rows, {b['finetune']} fine-tuning rows, max length {results['max_length']}. Each of "
        f"{p['repeats']} rounds trains every method of a stage from the same initial weights on the same "
        f"batches, in an order rotated by one per round, for {p['warmup']} warm-up and {p['steps']} timed "
        f"steps. s/step: median of the {p['repeats'] * p['steps']} pooled timed steps (IQR). x SFT: "
        "median over rounds of the ratio of the two methods' median step times within the round (range "
        "over rounds). Expected: forward+backward passes per step relative to SFT (+: terms that passes "
        f"do not count). Memory, each method once in a fresh process: {memory}, and that peak minus the "
        "memory held before the fit (model and data loaded), in MiB (x SFT). Fine-tuning starts from a "
        f"fresh LoRA. Wall time {results['wall_seconds'] / 60:.1f} min. "
        "Generated by `python -m antibody report` from the bench's bench.json.",
        "",
        "| stage | method | s/step (IQR) | x SFT (per-round range) | expected x SFT | basis of the expectation | "
        "peak MiB (x SFT) | over load MiB (x SFT) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, s in results["stages"].items():
        for method, m in s["methods"].items():
            e = m["expected"]
            cells = [stage, method, f"{m['median_s']:.3g} ({m['iqr_s'][0]:.3g}-{m['iqr_s'][1]:.3g})",
                     _ratio_cell(m["ratio"], m["ratio_range"]), f"{e['ratio']:.2f}{'+' if e['at_least'] else ''}",
                     e["basis"], *_memory_cells(m.get("memory"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: dict) -> str:
    """Everything the README block shows: the bench's table, or a demo's per-model table
    then its paired differences."""
    if results.get("kind") == "bench":
        return bench_table(results)
    if results.get("kind") == "judge-eval":
        from antibody.app.judge_report import judge_table

        return judge_table(results)
    from antibody.app.judge_change import judge_change_table

    parts = [markdown_table(results), comparisons_table(results), judge_change_table(results.get("by_judge") or {})]
    return "\n\n".join(p for p in parts if p)


def update_readme(readme: Path, table: str, block: str = "demo-results") -> None:
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise ConfigError(f"{readme}: no '{start}' ... '{end}' block to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def report_command(args: list[str]) -> int:
    if not args:
        raise ConfigError("report: usage: python -m antibody report <results.json> [README.md]")
    path = Path(args[0])
    if not path.is_file():
        raise ConfigError(f"report: {path} not found (run `make demo` or `make bench` first)")
    results = json.loads(path.read_text())
    table = render(results)
    if len(args) > 1:
        update_readme(Path(args[1]), table, block_name(results))
        print(f"[antibody] updated {args[1]}")
    else:
        print(table)
    return 0
