"""A study's results: every cell, the mean ± std over seeds per row and axis values, the
paired comparisons against the reference row, and the Markdown table (generated)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from antibody.app.evaluate import task_metric
from antibody.app.study.markdown import SPREAD, paired_cells, pm, weight_key_name
from antibody.app.study.plan import Cell
from antibody.app.study.results import (
    EVALUATED,
    CellResult,
    Compute,
    MeanStd,
    NamedPaired,
    OverSeeds,
    PairedRow,
    PlannedJob,
    RowSummary,
    SeedComparison,
    StageCost,
    StudyResults,
)

HS, HS_CORRECTED, REFUSAL, OVER = ("harmful/harmful_score", "harmful/harmful_score_corrected",
                                   "harmful/refusal_rate", "benign/over_refusal")
# the optional sets: harmful requests in another style, benign prompts that sound sensitive
HS2, REFUSAL2, OVER_EDGY = ("harmful_second/harmful_score", "harmful_second/refusal_rate",
                            "benign_edgy/over_refusal")
COLUMNS = ((HS, "HS"), (HS_CORRECTED, "HS corrected"), (REFUSAL, "refusal"), (HS2, "HS (2nd style)"),
           (REFUSAL2, "refusal (2nd style)"), (OVER, "over-refusal"), (OVER_EDGY, "over-refusal (edgy)"),
           ("FA", "FA"))
# weighted fine-tuning: the harmful rows' mean weight x batch size (1 = as under SFT) and the
# -r term as a harmful-row detector (not rates: shown as they are, not in %)
WEIGHT, AUROC_R = "weights/harmful_x_batch", "detector/auroc_neg_ratio"
RAW_COLUMNS = ((WEIGHT, "weight x B harmful"), (AUROC_R, "AUROC -r"))


def weights_and_detector(run_dir: Path, cfg=None) -> dict:
    """Weight shares per source (x batch size) and detector AUROCs of a fine-tuning run, flat
    keys (`weights/<source>_x_batch`, `detector/<term>`); empty for an unweighted run. `cfg`:
    the run's saved config when the caller has read it already."""
    from antibody.app.demo.tables import weight_summary
    from antibody.config import load_saved

    out: dict = {}
    train = run_dir / "metrics.json"
    if train.is_file():
        for k, v in (json.loads(train.read_text()).get("detector") or {}).items():
            out[f"detector/{k}"] = v
    weights = run_dir / "weights.jsonl"
    if weights.is_file() and (run_dir / "config.yaml").is_file():
        rows = [json.loads(line) for line in weights.read_text().splitlines() if line]
        w = weight_summary(rows, (cfg or load_saved(run_dir / "config.yaml")).data.finetune_batch_size)
        out[WEIGHT] = w.get("mean_weight_harmful_x_batch")
        out[SPREAD] = w.get("harmful_rows_at_least_half")
        for source, v in (w.get("benign_by_source") or {}).items():
            out[f"weights/{source}_x_batch"] = v["mean_weight_x_batch"]
    return {k: v for k, v in out.items() if v is not None}


# the task's metric key (one definition, app/evaluate.py); tradeoff.py imports it from here
_task_metric = task_metric


def cell_result(cell: Cell, root: Path) -> CellResult:
    """The cell's label, its model's job and evaluation metrics (values), or pending."""
    from antibody.app.rundir import RunDir
    from antibody.config import load_saved

    path = root / cell.model_job.name / "eval" / "metrics.json"
    out = CellResult(cell.label(), cell.model_job.name, cell.align.name if cell.align else None)
    if not path.is_file():
        return out
    metrics = json.loads(path.read_text())["metrics"]
    fa = _task_metric(metrics)
    values = {k: metrics[k].get("value") for k, _ in COLUMNS if k in metrics}
    if fa:
        values["FA"] = metrics[fa]["value"]
    sizes = {k: metrics[k].get("n") for k in (HS, OVER) if k in metrics}
    if fa:
        sizes["FA"] = metrics[fa].get("n")
    # a repaired model's weights and detector are its fine-tuning run's
    run_dir = root / (cell.finetune or cell.model_job).name
    cfg = load_saved(run_dir / "config.yaml") if RunDir(run_dir).stage() == "finetune" else None
    values.update(weights_and_detector(run_dir, cfg))
    # the weighting as configured (uniform for SFT, Lisa and SafeInstr; None: not fine-tuned),
    # since a uniform weighting's mean weight x B is not exactly 1 when the last batch is short
    return dataclasses.replace(out, state=EVALUATED, metrics=values, n=sizes, task=fa.split("/")[0] if fa else None,
                               weighting=None if cfg is None else cfg.method.finetune.weighting.value)


def _group_key(x: CellResult | SeedComparison, axes: list[str]) -> tuple:
    return (x.row, *(str(x.value(a)) for a in axes))


def summarise(results: StudyResults, root: Path) -> None:
    """Fill in, per (row, axis values), the mean and sample std over the evaluated seeds of
    each metric; per non-reference row, the paired HS difference to the reference row on the
    same prompts, seed by seed, and its mean ± std over seeds."""
    from antibody.evaluation.evaluator import read_predictions
    from antibody.evaluation.paired import paired_difference, paired_outcomes

    axes = results.axes
    done = results.evaluated
    groups: dict[tuple, list[CellResult]] = {}
    for c in done:
        groups.setdefault(_group_key(c, axes), []).append(c)
    results.summary = []
    for key, cells in groups.items():
        metrics = sorted({m for c in cells for m in c.metrics})
        results.summary.append(RowSummary(key[0], {a: cells[0].value(a) for a in axes}, cells[0].n,
                                          cells[0].weighting,
                                          {m: MeanStd.of(c.metrics.get(m) for c in cells) for m in metrics}))
    comparisons = []
    ref = results.reference
    if ref:
        by = {(_group_key(c, axes)[1:], c.seed, c.row): c for c in done}
        for c in done:
            r = by.get((_group_key(c, axes)[1:], c.seed, ref))
            if c.row == ref or r is None:
                continue
            preds = [read_predictions(root / x.job / "eval" / "predictions" / "harmful.jsonl", repair=False)
                     for x in (c, r)]
            diff = paired_difference(*paired_outcomes(*preds, "harmful_score"))
            comparisons.append(SeedComparison(c.row, {a: c.value(a) for a in axes}, c.seed, diff))
    results.comparisons = comparisons
    paired = []
    for key in {(_group_key(x, axes)) for x in comparisons}:
        diffs = [x for x in comparisons if _group_key(x, axes) == key]
        paired.append(PairedRow(key[0], dict(diffs[0].axes),
                                over_seeds([(x.paired.diff, x.paired.p_value, x.seed) for x in diffs])))
    # in the order results.json always had: by the text of each entry
    results.paired = sorted(paired, key=lambda x: str(x.to_json()))


def over_seeds(diffs: list[tuple[float, float, int]]) -> OverSeeds:
    """Per-seed paired differences of one comparison, each (difference, p-value, seed): their
    mean ± sample std, the 95% t interval over seeds and the p-values in seed order."""
    from antibody.app.study.paper import t_interval

    ci = t_interval([d for d, _, _ in diffs])
    return OverSeeds(MeanStd.of(d for d, _, _ in diffs), ci, [p for _, p, _ in sorted(diffs, key=lambda x: x[2])])


def named_over_seeds(named: list[dict], axes: list[str]) -> list[NamedPaired]:
    """The study file's named comparisons (one record per cell) per question and axis values:
    both rows' rates as mean ± std and the difference `over_seeds`."""
    groups: dict[tuple, list[dict]] = {}
    for c in named:  # axis values as text: a value may be a list, which cannot key a dict
        groups.setdefault((c["question"], c["metric"], *(str(c[a]) for a in axes)), []).append(c)
    return [NamedPaired(cs[0]["question"], cs[0]["metric"], cs[0]["row_a"], cs[0]["row_b"],
                        {a: cs[0][a] for a in axes}, MeanStd.of(c["rate_a"] for c in cs),
                        MeanStd.of(c["rate_b"] for c in cs),
                        over_seeds([(c["diff"], c["p_value"], c["seed"]) for c in cs]))
            for cs in groups.values()]


def compute(results: StudyResults, root: Path) -> Compute:
    """What the study's finished jobs cost on the machines that ran them: training minutes per
    stage (steps x the run's median s/step, so a run resumed across sessions counts whole)
    and evaluation minutes (each evaluated model's wall time), and the CPU counts seen."""
    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.is_file() else {}

    names = {n for c in results.cells for n in (c.job, c.align_job) if n}
    # a repaired cell's job is its repair: the fine-tuning it repaired is named in its metrics
    names |= {Path(init).name for n in names
              if (init := read(root / n / "metrics.json").get("init_from")) and (root / n / "stage").is_file()
              and (root / n / "stage").read_text().strip() == "repair"}
    out = Compute()
    cpus = set()
    for name in sorted(names):
        data = read(root / name / "metrics.json")
        if data.get("stage") == "repair" and data.get("wall_seconds"):  # no steps: its wall time
            stage = out.train.setdefault("repair", StageCost())
            stage.jobs += 1
            stage.minutes += data["wall_seconds"] / 60
        if data.get("seconds_per_step") and data.get("steps") and data.get("stage"):
            stage = out.train.setdefault(data["stage"], StageCost())
            stage.jobs += 1
            stage.minutes += data["steps"] * data["seconds_per_step"] / 60
            if data.get("cpu_count"):
                cpus.add(data["cpu_count"])
        seconds = read(root / name / "eval" / "metrics.json").get("eval_seconds")
        if seconds:
            out.eval.jobs += 1
            out.eval.minutes += seconds / 60
    out.cpu_counts = sorted(cpus)
    return out


def compute_line(cost: Compute) -> str:
    parts = [f"{v.jobs} {stage} jobs {v.minutes:.1f} min" for stage, v in sorted(cost.train.items())]
    parts.append(f"{cost.eval.jobs} evaluations {cost.eval.minutes:.1f} min")
    cores = "/".join(str(c) for c in cost.cpu_counts) or "?"
    return (f"Compute of the finished jobs (training: steps x each run's median s/step; evaluation: wall time; "
            f"measured while other work may have shared the machine): {', '.join(parts)}; {cost.minutes:.1f} min "
            f"in all, on machines with {cores} CPU cores.")


def study_table(results: StudyResults) -> str:
    axes = results.axes
    present = [(k, name) for k, name in COLUMNS if any(k in s.stats for s in results.summary)]
    raw = [(k, name) for k, name in RAW_COLUMNS if any(k in s.stats for s in results.summary)]
    head = ["row", *axes, "seeds", *(name for _, name in present), *(name for _, name in raw),
            "n (harmful / benign / task)"]
    lines = [f"Study `{results.study}`: rates in %, mean ± sample std over seeds (each seed: its own "
             f"training randomness, same data and prompts); {results.jobs} jobs. Refusal and over-refusal: "
             "answers the keyword detector (`is_refusal`) calls refusals; its sensitivity differs by refusal "
             "style (docs/results/judge-eval.md, refusal detectors). Generated by `python -m antibody study`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in results.summary:
        sizes = " / ".join(str(s.n.get(k, "-")) for k in (HS, OVER, "FA"))
        cells = [s.row, *(str(s.value(a)) for a in axes), str(s.seeds), *(pm(s.get(k)) for k, _ in present),
                 *(pm(s.get(k), scale=1.0, digits=2) for k, _ in raw), sizes]
        lines.append("| " + " | ".join(cells) + " |")
    pending = [c for c in results.cells if not c.evaluated]
    if pending:
        lines += ["", f"{len(pending)} of {len(results.cells)} cells pending (not run yet)."]
    if results.compute is not None:
        lines += ["", compute_line(results.compute)]
    if results.paired:
        lines += ["", f"Paired HS differences to `{results.reference}` on the same prompts (points, mean ± std "
                  "over seeds; the two-sided 95% t interval over seeds, which covers training randomness on these "
                  "prompts, not prompt sampling; exact McNemar p per seed, which covers the prompts):", "",
                  "| row | " + " | ".join(axes) + (" | " if axes else "") + "HS diff | 95% t interval | p per seed |",
                  "|---|" + "---|" * len(axes) + "---|---|---|"]
        for p in results.paired:
            lines.append("| " + " | ".join([p.row, *(str(p.value(a)) for a in axes), *paired_cells(p.over)]) + " |")
    from antibody.app.study.agreement import agreement_table

    agreement = agreement_table(results)  # a study of one two-valued axis: does it move the comparisons?
    if agreement:
        lines += ["", agreement]
    if results.stress is not None:  # a study with an `attack` axis: each row's worst case
        from antibody.app.study.stress_table import stress_table

        lines += ["", stress_table(results.stress)]
    mechanism = weights_table(results)
    if mechanism:
        lines += ["", mechanism]
    if results.paper:
        from antibody.app.study.paper import paper_table

        lines += ["", paper_table(results.paper)]
    if results.named_paired:
        lines += ["", named_comparisons_table(results)]
    return "\n".join(lines)


def named_comparisons_table(results: StudyResults) -> str:
    """The study file's named comparisons over seeds (`named_over_seeds`): both rows' rates,
    A - B as mean ± std, its 95% t interval and the exact McNemar p of each seed."""
    axes = results.axes
    lines = ["The study's named comparisons: A - B on the same prompts, seed by seed (points, mean ± std over "
             "seeds; the 95% t interval over seeds; exact McNemar p per seed, not corrected for the number of "
             "comparisons):", "",
             "| question | metric | " + " | ".join(axes) + (" | " if axes else "")
             + "A | B | A - B | 95% t interval | p per seed |",
             "|---|---|" + "---|" * len(axes) + "---|---|---|---|---|"]
    for c in results.named_paired or []:
        cells = [c.question, c.metric, *(str(c.axes.get(a)) for a in axes), f"{c.a} {pm(c.rate_a)}",
                 f"{c.b} {pm(c.rate_b)}", *paired_cells(c.over)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def weighted_rows(results: StudyResults) -> list[RowSummary]:
    """The summary rows whose fine-tuning weighted its rows: by the configured weighting, or
    (results written before it was recorded) some source's weight x B is not 1."""
    return [s for s in results.summary
            if (s.weighting not in (None, "uniform") if s.weighting_recorded else
                any(k.startswith("weights/") and v.mean not in (None, 1.0) for k, v in s.stats.items()))]


def weight_keys(summary: list[RowSummary]) -> list[str]:
    """The weights/ keys (harmful first), the harmful rows' spread, then the detector/ keys
    present in these rows."""
    order = ("weights/", "rows/", "detector/")
    return sorted({k for s in summary for k in s.stats if k.startswith(order)},
                  key=lambda k: (next(i for i, p in enumerate(order) if k.startswith(p)), k != WEIGHT, k))


def weights_table(results: StudyResults) -> str:
    """What the weights did, for rows whose fine-tuning weighted its rows: each source's
    mean weight x batch size (1 = as under SFT) and each term's AUROC as a harmful-row
    detector, mean ± std over seeds. Empty when no row weighted."""
    summary = weighted_rows(results)
    if not summary:
        return ""
    keys = weight_keys(summary)
    names = [weight_key_name(k) for k in keys]
    axes = results.axes
    lines = ["Weights (mean weight x batch size per source; 1 = uniform), the share of harmful rows that "
             "kept at least half of a uniform weight, and each term as a harmful-row detector (AUROC over "
             "the run's rows), mean ± std over seeds:", "",
             "| row | " + " | ".join([*axes, *names]) + " |", "|---|" + "---|" * (len(axes) + len(keys))]
    for s in summary:
        lines.append("| " + " | ".join([s.row, *(str(s.value(a)) for a in axes),
                                        *(pm(s.get(k), scale=1.0, digits=2) for k in keys)]) + " |")
    return "\n".join(lines)


def dry_run_table(rows: list[PlannedJob], n_cells: int, to_evaluate: int = 0,
                  eval_seconds: float | None = None) -> str:
    known = [r.estimated_seconds for r in rows if r.estimated_seconds is not None]
    unknown = [r for r in rows if r.estimated_seconds is None and r.state != "done"]
    differs = sum(r.state == "config differs" for r in rows)
    lines = [f"{n_cells} cells, {len(rows)} jobs "
             f"({sum(r.state == 'done' for r in rows)} done, {sum(r.state == 'resumable' for r in rows)} "
             f"resumable, {sum(r.state == 'todo' for r in rows)} to do"
             + (f", {differs} finished under its name with another config" if differs else "") + ")", "",
             "| job | stage | method | state | steps | s/step (measured) | estimate |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        sps = "-" if r.seconds_per_step is None else f"{r.seconds_per_step:.2f}"
        est = "-" if r.estimated_seconds is None else f"{r.estimated_seconds / 60:.1f} min"
        lines.append(f"| {r.job} | {r.stage} | {r.method} | {r.state} | {r.steps} | {sps} | {est} |")
    lines.append("")
    lines.append(f"Training time left, where a step cost was measured: {sum(known) / 60:.1f} min"
                 + (f"; {len(unknown)} job(s) with no measured step cost of their method yet "
                    "(run one job, or `make bench`, to measure it)" if unknown else "") + ".")
    if to_evaluate:
        each = "no evaluation measured yet" if eval_seconds is None else f"{eval_seconds / 60:.1f} min each, measured"
        lines.append(f"Models to evaluate: {to_evaluate} ({each}).")
    return "\n".join(lines)
