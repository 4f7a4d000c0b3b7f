"""A study beside a published result (`paper:` in the study file): does the embedded model
order the methods as the paper did, and does each method separate from the reference row
at all?

- Orderings: Kendall's tau-b between the paper's HS and the study's mean HS over the rows
  both have (scipy.stats.kendalltau), and every pair of rows the two order differently.
- Separation: the reference row's paired HS difference, seed by seed on the same prompts
  (study.report.summarise), as mean ± std over seeds with a two-sided 95% t interval on
  n_seeds - 1 degrees of freedom. A row whose interval holds 0 does not separate from the
  reference at this scale, and the table says so rather than ranking it on its mean alone.
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any, Optional

from antibody.app.study.results import MeanStd, StudyResults

HS = "harmful/harmful_score"


def _matches(entry: dict[str, Any], at: dict[str, Any]) -> bool:
    """Whether `entry` (axis -> value) holds every value of `at` (compared as text)."""
    return all(str(entry.get(k)) == str(v) for k, v in at.items())


def _percent(stat: MeanStd) -> dict:
    return {"mean": None if stat.mean is None else 100 * stat.mean, "std": None if stat.std is None else 100 * stat.std}


def t_interval(values: list[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """Two-sided t interval of the mean (None with fewer than two values)."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def paper_comparison(results: StudyResults, paper: dict) -> dict:
    """Rows with both a paper HS and an evaluated mean HS at `paper['at']`: values in %,
    ranks (1 = lowest HS), the paired difference to the reference, Kendall's tau-b and the
    discordant pairs. Rows not evaluated yet are listed as pending."""
    from scipy import stats

    at = paper.get("at") or {}
    summary = {s.row: s for s in results.summary if _matches(s.axes, at) and HS in s.stats}
    # the paired differences to the reference and their t intervals, as summarise computed them
    paired = {p.row: p.over for p in results.paired if _matches(p.axes, at)}
    rows, pending = [], []
    for row, paper_hs in paper["hs"].items():
        if row not in summary:
            pending.append(row)
            continue
        s = summary[row]
        hs, fa = s.stats[HS], s.get("FA")
        entry = {"row": row, "paper_hs": paper_hs, "paper_fa": (paper.get("fa") or {}).get(row),
                 "hs": _percent(hs), "seeds": hs.seeds, "fa": None if fa is None else _percent(fa)}
        if row in paired:
            d, ci = paired[row].diff, paired[row].ci95
            entry["diff_to_reference"] = {"mean": 100 * d.mean,
                                          "std": None if d.std is None else 100 * d.std,
                                          "ci95": None if ci is None else [100 * ci[0], 100 * ci[1]],
                                          "seeds": d.seeds}
            entry["separates"] = None if ci is None else not (ci[0] <= 0 <= ci[1])
        rows.append(entry)
    out: dict[str, Any] = {"source": paper.get("source"), "setting": paper.get("setting"), "at": at,
                           "reference": results.reference, "rows": rows, "pending": pending}
    # the paper's rank among all its rows; ours among the rows evaluated so far; ties share
    # the mean of their ranks (two rows at the same HS are not ordered)
    paper_ranks = dict(zip(paper["hs"], stats.rankdata(list(paper["hs"].values())), strict=True))
    ours = stats.rankdata([r["hs"]["mean"] for r in rows]) if rows else []
    for r, rank in zip(rows, ours, strict=True):
        r["paper_rank"], r["rank"] = float(paper_ranks[r["row"]]), float(rank)
    if len(rows) >= 2:
        tau = stats.kendalltau([r["paper_hs"] for r in rows], [r["hs"]["mean"] for r in rows])
        out["kendall_tau"] = {"tau": float(tau.statistic), "p_value": float(tau.pvalue), "rows": len(rows)}
        out["discordant"] = [
            [a["row"], b["row"]] for a, b in itertools.combinations(rows, 2)
            if (a["paper_hs"] - b["paper_hs"]) * (a["hs"]["mean"] - b["hs"]["mean"]) < 0]
    return out


def _num(stat: Optional[dict]) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.1f}" + ("" if stat.get("std") is None else f" ± {stat['std']:.1f}")


def paper_table(cmp: dict) -> str:
    """The comparison as Markdown (HS and FA in %)."""
    at = ", ".join(f"{k}={v}" for k, v in cmp["at"].items())
    ref = cmp["reference"]
    lines = [f"Against the paper ({cmp['setting']}; {cmp['source']}), at {at or 'every cell'}: HS in %, "
             f"rank 1 = lowest HS (the paper's among its {len(cmp['rows']) + len(cmp['pending'])} rows, ours among "
             f"the {len(cmp['rows'])} evaluated). \"Separates\": the 95% t interval over seeds of the paired HS difference "
             f"to `{ref}` (same prompts, seed by seed) excludes 0.", "",
             f"| row | paper HS | paper rank | HS here | rank here | HS − `{ref}` here [95% CI] | separates | "
             "paper FA | FA here |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(cmp["rows"], key=lambda r: r["paper_rank"]):
        d = r.get("diff_to_reference")
        if d is None:
            diff, sep = "reference" if r["row"] == ref else "-", "-"
        else:
            ci = "" if d["ci95"] is None else f" [{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}]"
            diff = f"{d['mean']:+.1f}{ci}"
            sep = {True: "yes", False: "**no**", None: "-"}[r.get("separates")]
        paper_fa = "-" if r["paper_fa"] is None else f"{r['paper_fa']:.2f}"
        lines.append(f"| {r['row']} | {r['paper_hs']:.2f} | {r['paper_rank']:g} | {_num(r['hs'])} | {r['rank']:g} | "
                     f"{diff} | {sep} | {paper_fa} | {_num(r['fa'])} |")
    if cmp.get("kendall_tau"):
        k = cmp["kendall_tau"]
        lines += ["", f"Kendall's tau-b between the two HS orderings over {k['rows']} rows: {k['tau']:+.2f} "
                  f"(p = {k['p_value']:.2g}). Pairs ordered the other way round here: "
                  + (", ".join(f"`{a}` / `{b}`" for a, b in cmp["discordant"]) or "none") + "."]
    if cmp["pending"]:
        lines += ["", "Not evaluated yet: " + ", ".join(f"`{r}`" for r in cmp["pending"]) + "."]
    return "\n".join(lines)
