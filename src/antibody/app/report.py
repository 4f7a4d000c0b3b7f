"""`report`: render a results file (demo, study, judge-eval, bench, merge-check) as Markdown
into its results page.

    python -m antibody report runs/demo/results.json            # -> docs/results/demo.md
    python -m antibody report runs/bench/bench.json             # -> docs/results/bench.md
    python -m antibody report runs/<study>/results.json         # -> docs/results/<study>.md
    python -m antibody report <results.json> <page>             # into another page's block
    python -m antibody report <results.json> -                  # print only

Each table lives between two markers (``block_name``), so the numbers in the docs are always
the ones a program wrote, never typed by hand. A results page (``default_page``) is created,
or given the block at its end, when it lacks it; a page named on the command line must
already hold the block. A study with a paper comparison also refreshes the README's headline
block `study-<name>-paper` when the README carries it.
"""

from __future__ import annotations

import json
from pathlib import Path

from antibody.app.demo.tables import comparisons_table, markdown_table
from antibody.config import ConfigError
from antibody.infra.files import atomic_write_text


def block_name(results: dict) -> str:
    """The block of a results file: `demo-results` for the main suite, `demo-<suite>-results`
    for another (e.g. the controls), so each suite's table has its own place;
    `bench-<model>-results` for the bench (its file says `"kind": "bench"`), one per model
    (the bench page shows the tiny and the embedded model), and `bench-<model>-<axis>-results`
    for a bench that compared variants (precisions, clipping), so that it never replaces the
    table of every method's cost."""
    if results.get("kind") == "bench":
        variants = results.get("variants") or results.get("precisions") or []
        axis = results.get("axis", "precision")
        return f"bench-{results['model']}-{axis}-results" if len(variants) > 1 else f"bench-{results['model']}-results"
    if results.get("kind") == "judge-eval":
        return "judge-eval-results"
    if results.get("kind") == "merge-check":
        return "merge-check-results"
    if results.get("kind") == "study":
        return f"study-{results['study']}-results"
    suite = results.get("suite", "main")
    return "demo-results" if suite == "main" else f"demo-{suite}-results"


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
    """The bench's costs (antibody.app.bench.run): per stage and method, measured against the
    pass-count expectation, every figure a ratio to SFT of the same stage."""
    p, b = results["protocol"], results["batch_size"]
    # the variants of the bench's one axis (precision or clipping); files written before the
    # clipping axis name them precisions
    first = results.get("variant", results["precision"])
    variants = results.get("variants") or results.get("precisions") or [first]
    axis = results.get("axis", "precision")
    held = "" if axis in ("precision", "variant") else f"{results['precision']}; {axis}: "
    named = results.get("variant_overrides")  # variants=...: each label with its overrides
    shown = [f"{v} = {' '.join(named[v]) or 'the config as it is'}" for v in variants] if named else variants
    kinds = {(m.get("memory") or {}).get("kind") for s in results["stages"].values() for m in s["methods"].values()}
    memory = "; ".join(_MEMORY_KINDS[k] for k in sorted(k for k in kinds if k)) or "not measured"
    by = results.get("by_variant") or results.get("by_precision") or {}
    runs = {first: results["stages"]} | {v: r["stages"] for v, r in by.items()}
    compare = len(runs) > 1  # the variant columns only where the bench compared variants
    lines = [
        f"Model {results['model']} on {results['device']} ({held}{', '.join(shown)}, "
        f"{results['torch_threads']} "
        f"torch threads, {results['cpu_count']} CPUs); batch {b['align']} alignment + {b['harmful']} harmful "
        f"rows, {b['finetune']} fine-tuning rows, max length {results['max_length']}. Each of "
        f"{p['repeats']} rounds trains every method of a stage from the same initial weights on the same "
        f"batches, in an order rotated by one per round, for {p['warmup']} warm-up and {p['steps']} timed "
        f"steps. s/step: median of the {p['repeats'] * p['steps']} pooled timed steps (IQR). x SFT: "
        "median over rounds of the ratio of the two methods' median step times within the round (range "
        "over rounds). Expected: forward+backward passes per step relative to SFT (+: terms that passes "
        f"do not count). Memory, each method once in a fresh process: {memory}, and that peak minus the "
        "memory held before the fit (model and data loaded), in MiB (x SFT). Fine-tuning starts from a "
        "fresh LoRA. "
        + (f"x {first}: the same method's step time over its time at {first}, per round (median, "
           "range over rounds). " if compare else "")
        + f"Wall time {results['wall_seconds'] / 60:.1f} min. "
        "Generated by `python -m antibody report` from the bench's bench.json.",
        "",
        f"| stage | method | {f'{axis} | ' if compare else ''}s/step (IQR) | x SFT (per-round range) | "
        f"{f'x {first} | ' if compare else ''}expected x SFT | "
        "basis of the expectation | peak MiB (x SFT) | over load MiB (x SFT) |",
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if compare else ""),
    ]
    for stage in results["stages"]:
        for method in results["stages"][stage]["methods"]:
            for variant, stages in runs.items():
                m, e = stages[stage]["methods"][method], results["stages"][stage]["methods"][method]["expected"]
                vs = m.get("variant_ratio", m.get("precision_ratio"))
                vs_range = m.get("variant_ratio_range", m.get("precision_ratio_range"))
                cells = [stage, method, *([variant] if compare else []),
                         f"{m['median_s']:.3g} ({m['iqr_s'][0]:.3g}-{m['iqr_s'][1]:.3g})",
                         _ratio_cell(m["ratio"], m["ratio_range"]),
                         *(["-" if vs is None or variant == first else _ratio_cell(vs, vs_range)] if compare else []),
                         f"{e['ratio']:.2f}{'+' if e['at_least'] else ''}", e["basis"], *_memory_cells(m.get("memory"))]
                lines.append("| " + " | ".join(cells) + " |")
    for method, m in (results.get("repair") or {}).items():  # one-shot: in SFT fine-tuning steps
        e = m["expected"]
        cells = ["repair", method, *([first] if compare else []), f"{m['median_s']:.3g} once",
                 _ratio_cell(m["ratio"], m["ratio_range"]) + " SFT fine-tuning steps", *(["-"] if compare else []),
                 f"{e['ratio']:.2f}", e["basis"], "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: dict) -> str:
    """Everything the block shows: the bench's table, or a demo's per-model table
    then its paired differences."""
    if results.get("kind") == "bench":
        return bench_table(results)
    if results.get("kind") == "judge-eval":
        from antibody.app.judge.report import judge_table

        return judge_table(results)
    if results.get("kind") == "study":
        from antibody.app.study.report import study_table
        from antibody.app.study.results import StudyResults

        return study_table(StudyResults.from_json(results))
    if results.get("kind") == "merge-check":
        from antibody.app.merge_check import merge_check_table

        return merge_check_table(results)
    from antibody.app.judge.change import judge_change_table
    from antibody.app.study.suite import SuiteResults

    suite = SuiteResults.from_json(results)
    parts = [markdown_table(suite), comparisons_table(suite), judge_change_table(suite.by_judge or {})]
    return "\n\n".join(p for p in parts if p)


RESULTS_DIR = Path("docs", "results")  # relative to the repository root (the working directory)
README = Path("README.md")


def default_page(block: str) -> Path:
    """Where a block is published: one page per demo suite, study, judge evaluation and the
    bench (both models on one page), named after the block; merge-check's table is part of
    the GPU notes."""
    if block == "merge-check-results":
        return Path("docs", "gpu").with_suffix(".md")
    if block.startswith("bench-"):
        return (RESULTS_DIR / "bench").with_suffix(".md")
    name = block.removesuffix("-results")
    return (RESULTS_DIR / name.removeprefix("study-")).with_suffix(".md")


def update_block(page: Path, table: str, block: str, create: bool = False) -> None:
    """Replace the text between the block's markers. With `create`, a missing page is written
    with a title and the block, and a page without the block gets it appended; otherwise a
    missing block is an error that names it, and the page is left as it was."""
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    text = page.read_text() if page.is_file() else None
    if text is None or start not in text or end not in text:
        if not create:
            raise ConfigError(f"{page}: no '{start}' ... '{end}' block to replace")
        text = (text.rstrip("\n") + "\n\n" if text else f"# {block}\n\n") + f"{start}\n{end}\n"
        page.parent.mkdir(parents=True, exist_ok=True)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(page, f"{head}{start}\n{table}\n{end}{tail}")


def headline_block(results: dict) -> str | None:
    """The README's headline block of a study: its comparison with the paper, if it has one."""
    if results.get("kind") == "study" and results.get("paper"):
        return f"study-{results['study']}-paper"
    return None


def report_command(args: list[str]) -> int:
    if not args or len(args) > 2:
        raise ConfigError("report: usage: python -m antibody report <results.json> [<page> | -]")
    path = Path(args[0])
    if not path.is_file():
        raise ConfigError(f"report: {path} not found (run `make demo` or `make bench` first)")
    results = json.loads(path.read_text())
    block = block_name(results)
    table = render(results)
    if len(args) > 1 and args[1] == "-":
        print(table)
        return 0
    page = Path(args[1]) if len(args) > 1 else default_page(block)
    if len(args) > 1 and (not page.is_file() or f"<!-- {block}:start -->" not in page.read_text()):
        # before any figure is copied beside it
        raise ConfigError(f"report: {page} has no block {block} (omit it to write {default_page(block)})")
    if results.get("kind") == "study":
        from antibody.app.study.plots import page_figures

        table += page_figures(path.parent, page, results["study"])
    update_block(page, table, block, create=len(args) == 1)
    print(f"[antibody] updated {page} (block {block})")
    headline = headline_block(results)
    if headline and len(args) == 1 and README.is_file() and f"<!-- {headline}:start -->" in README.read_text():
        from antibody.app.study.paper import paper_table

        update_block(README, paper_table(results["paper"]), headline)
        print(f"[antibody] updated {README} (block {headline})")
    return 0
