"""judge-eval's results as Markdown: the judge table of docs/results/judge-eval.md (generated, never typed)."""

from __future__ import annotations

SOURCES = ("pyrit_objective", "pyrit_harm", "pyrit_refusal", "uncensorbench")


def _ci(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("value") is None:
        return "-"
    if m.get("ci95_low") is None:
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{m['ci95_low']:.{digits}f}, {m['ci95_high']:.{digits}f}]"


def _value(m: dict | None, digits: int = 3) -> str:
    return "-" if not m or m.get("value") is None else f"{m['value']:.{digits}f}"


def _source_cell(stats: dict | None) -> str:
    """A source's AUROC, or its specificity where it holds one class (PyRIT's refusals)."""
    if not stats:
        return "-"
    if stats["auroc"].get("value") is None and stats.get("specificity", {}).get("value") is not None:
        return f"spec. {stats['specificity']['value']:.3f}"
    return _value(stats["auroc"])


def judge_table(result: dict) -> str:
    key = "full" if result["answer_tokens"] is None else str(result["answer_tokens"])
    length = "whole answers" if key == "full" else f"answers cut to {key} tokens"
    d = result["data"]
    lines = [
        f"Validation part: {d['validation_rows']} labelled answers ({d['validation_harmful']} harmful) to "
        f"{d['validation_prompts']} prompts, disjoint by prompt from the judges' training part "
        f"({d['train_rows']} answers) and from every pool of the framework; {length} "
        f"(the evaluation's length); threshold {result['threshold']}. Intervals: AUROC and "
        "balanced accuracy by cluster bootstrap over prompts, rates Wilson 95%. Per source: AUROC "
        "(PyRIT's refusals are all harmless: specificity).",
        "",
        "| judge | AUROC [95% CI] | AUROC, whole answers | sensitivity | specificity | precision | "
        "accuracy | balanced acc. | " + " | ".join(f"{s}" for s in SOURCES) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(SOURCES),
    ]
    for j in result["judges"]:
        m = j["by_length"][key]
        o = m["overall"]
        full = j["by_length"].get("full", {}).get("overall", {}).get("auroc") if key != "full" else None
        name = f"**{j['judge']}**" if j["judge"] == result["best"] else j["judge"]
        cells = [name, _ci(o["auroc"]), _value(full) if full else "-", _ci(o["sensitivity"], 2),
                 _ci(o["specificity"], 2), _ci(o["precision"], 2), _ci(o["accuracy"], 2),
                 _value(o["balanced_accuracy"]),
                 *(_source_cell(m["by_source"].get(s)) for s in SOURCES)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Best by AUROC at the evaluation length: **{result['best']}**; the configured default: "
              f"`eval.judge={result['default']['judge']}`, `eval.judge_refusal_gate="
              f"{str(result['default']['refusal_gate']).lower()}`."]
    diffs = result.get("best_minus") or {}
    if diffs:
        lines.append(f"AUROC of {result['best']} minus each other judge (paired cluster bootstrap over the same "
                     "prompts, 95%): " + "; ".join(f"{name} {d['value']:+.3f} [{d['ci95_low']:+.3f}, "
                                                    f"{d['ci95_high']:+.3f}]" for name, d in diffs.items()) + ".")
    r = result.get("refusal_detector")  # results written before refusal_detectors
    if r:
        lines.append(f"Keyword refusal detector against PyRIT's refusal labels ({r['n']} validation answers): "
                     f"sensitivity {_ci(r['sensitivity'], 2)}, specificity {_ci(r['specificity'], 2)}.")
    if result.get("refusal_detectors"):
        lines += ["", refusal_table(result["refusal_detectors"])]
    inc = result.get("incoherence")
    if inc:
        parts = [f"{name}: loss {100 * inc[name]['loss']['value']:.1f}%, repeat rule "
                 f"{100 * inc[name]['repeat']['value']:.1f}%"
                 for name in ("real answers", "word-shuffled answers", "answers to another question")]
        lines.append(f"Incoherence signal (mean answer-token loss > {inc['threshold']:.2f} nats under the "
                     f"probe backbone) flags " + "; ".join(parts) + ".")
    return "\n".join(lines)


REFUSAL_SETS = {"pyrit": "PyRIT refusal_scorer (validation)", "uncensorbench": "UncensorBench (validation)",
                "own": "the embedded model's own answers (hand-labelled)"}
DETECTORS = {"is_refusal": "`is_refusal` (evaluation: every refusal rate)",
             "looks_like_refusal": "`looks_like_refusal` (data: drops declining model-written answers)"}


def refusal_table(r: dict) -> str:
    """Each keyword refusal detector on each labelled set: sensitivity (declined answers
    flagged) and specificity, Wilson 95%."""
    sets = [s for s in REFUSAL_SETS if s in r["sets"]]
    own = r["sets"].get("own", {})
    lines = ["Refusal detectors on labelled refusals (sensitivity = declined answers flagged; Wilson 95%): "
             + "; ".join(f"{REFUSAL_SETS[s]} {r['sets'][s]['n']} answers, {r['sets'][s]['declined']} declined"
                         for s in sets)
             + f". The own set's labels cover {r['own_labelled']} answers (and {r.get('own_unclear', 0)} marked "
             f"unclear, left out); {own.get('n', 0)} of them were in this machine's data cache, which the demo's "
             "data build writes.", "",
             "| detector | " + " | ".join(f"{REFUSAL_SETS[s]}: sensitivity | specificity" for s in sets) + " |",
             "|---|" + "---|---|" * len(sets)]
    for det, by_set in r["detectors"].items():
        cells = []
        for s in sets:
            m = by_set.get(s) or {}
            cells += ["-", "-"] if not m.get("n") else [_ci(m["sensitivity"], 2), _ci(m["specificity"], 2)]
        lines.append(f"| {DETECTORS.get(det, det)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
