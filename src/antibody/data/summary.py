"""Composition of the splits: per-split statistics and their plain-text table
(`antibody data-summary`, and data_summary.json next to every run)."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from typing import Optional

from antibody.config.attack import attack_spec
from antibody.config.schema import Config
from antibody.data.collate import EncodedRow
from antibody.data.records import Record


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def split_summary(records: Sequence[Record], encoded: Sequence[EncodedRow], stats) -> dict:
    """Rows, sources, harmful/benign, mean lengths (characters of the raw prompt and response;
    tokens of the formatted prompt and of the response, before truncation), rows truncated
    to data.max_length, the rows removed while building the split, and the model answers
    the source dropped (declined or empty)."""
    harmful = sum(1 for r in records if r.is_harmful)
    return {
        "rows": len(records),
        "harmful": harmful,
        "benign": len(records) - harmful,
        "by_source": dict(sorted(Counter(r.source for r in records).items())),
        "mean_prompt_chars": _mean([len(r.instruction) + len(r.input) for r in records]),
        "mean_response_chars": _mean([len(r.response) for r in records]),
        "mean_prompt_tokens": _mean([e.own.prompt_tokens for e in encoded]),
        "mean_response_tokens": _mean([e.own.response_tokens for e in encoded]),
        "mean_refusal_tokens": _mean([e.refusal.response_tokens for e in encoded]),
        "truncated": sum(1 for e in encoded if e.own.truncated),
        "duplicates_removed": stats.duplicates_removed,
        "repeated_rows_removed": stats.repeated_rows_removed,
        "excluded_prompts": stats.excluded,
        "answers_dropped": stats.answers_dropped,
        "answers_not_harmful": stats.answers_not_harmful,
    }


# the keys outside the upload each attack.* setting changes (config/attack_rules.py)
_CHANGED = {"lr_factor": ("method.finetune.lr", ("method", "finetune", "lr")),
            "steps_factor": ("method.finetune.max_steps", ("method", "finetune", "max_steps"))}


def attack_summary(cfg: Config, user: Sequence[Record], trained: Sequence[Record],
                   adaptive: Optional[dict] = None) -> dict:
    """The attack (config/attack.py), what it controls and changed (its settings, and the
    fine-tuning values a hyper-parameter attack set), and the rows it uploaded: the user split
    (`user`) and the rows the fine-tuning stage trains on (`trained`: without the harmful rows
    under attack=benign, with SafeInstr's demonstrations under that method). The tags are
    for analysis only, like every is_harmful. An adaptive attack adds what the attacker must
    know and `adaptive_build`, what it built under the attacked model (data/adaptive/upload.py:
    refusal_prefix's candidates' mean r and its choice; self_written's generation)."""
    attack = cfg.attack
    spec = attack_spec(attack.name)
    settings: dict = {}
    for key in spec.reads:
        settings[f"attack.{key}"] = getattr(attack, key)
        if key in _CHANGED:
            name, path = _CHANGED[key]
            settings[name] = functools.reduce(getattr, path, cfg)
    return {
        "name": attack.name.value,
        "threat_model": spec.threat_model.value,
        "adaptive": spec.adaptive,
        "settings": settings,
        "source": spec.source,
        "upload_rows": len(user),
        "upload_harmful": sum(1 for r in user if r.is_harmful),
        "upload_adaptive": sum(1 for r in user if r.meta.get("adaptive")),
        "trained_rows": len(trained),
        "trained_harmful": sum(1 for r in trained if r.is_harmful),
        **({"knowledge": spec.knowledge, "adaptive_build": adaptive} if spec.adaptive else {}),
    }


def _adaptive_line(build: dict) -> str:
    """One line on what an adaptive attack built (refusal_prefix's choice, self_written's writer)."""
    if not build.get("built"):
        return f"  adaptive rows not built: {build.get('why', '')}"
    digest = str(build.get("attacked_model", {}).get("adapter_sha256", ""))[:12]
    if "chosen" in build:
        c = build["chosen"]
        return (f"  chose prefix {c['prefix']!r} + transition {c['transition']!r}: mean r {c['mean_r']:.3f} on "
                f"{build['held_out_rows']} held-out rows (plain answers {build['plain_mean_r']:.3f}; best of "
                f"{len(build['candidates'])} candidates), under the aligned adapter {digest}")
    if "prefill" in build:
        return (f"  {build['answers_written']} answers written by the aligned adapter {digest} after the prefill "
                f"{build['prefill']!r} ({build['answers_dropped']} dropped by the harmful-answer filter)")
    return f"  {build.get('why', '')}"


_COLUMNS = (
    ("split", None),
    ("rows", "rows"),
    ("harmful", "harmful"),
    ("benign", "benign"),
    ("prompt ch", "mean_prompt_chars"),
    ("prompt tok", "mean_prompt_tokens"),
    ("resp ch", "mean_response_chars"),
    ("resp tok", "mean_response_tokens"),
    ("truncated", "truncated"),
    ("dups removed", "duplicates_removed"),
    ("repeats", "repeated_rows_removed"),
    ("excluded", "excluded_prompts"),
    ("dropped", "answers_dropped"),
    ("not harmful", "answers_not_harmful"),
)


def _cell(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def format_summary(summary: dict) -> str:
    """An aligned plain-text table of `SafetyDataModule.summary()`, then sources per split."""
    splits: dict = summary["splits"]
    table = [[name for name, _ in _COLUMNS]]
    for split, row in splits.items():
        table.append([split] + [_cell(row[key]) for _, key in _COLUMNS[1:]])
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    header = (
        f"prompt format: {summary['prompt_format']}  max_length: {summary['max_length']}  "
        f"seed: {summary['seed']}  stage: {summary['stage']} (trains on '{summary['train_split']}')"
    )
    out = [header]
    attack = summary.get("attack")
    if attack:  # summaries written before attacks existed have none
        settings = "".join(f", {k}={v}" for k, v in attack["settings"].items())
        out.append(
            f"attack: {attack['name']} (threat model: {attack['threat_model']}{settings}): uploads "
            f"{attack['upload_rows']} rows, {attack['upload_harmful']} harmful; fine-tuning trains on "
            f"{attack['trained_rows']}, {attack['trained_harmful']} harmful"
        )
        if attack.get("adaptive_build"):
            out.append(_adaptive_line(attack["adaptive_build"]))
    out += [line(table[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in table[1:]]
    out.append("")
    out.append("sources:")
    for split, row in splits.items():
        parts = ", ".join(f"{src} {n}" for src, n in row["by_source"].items()) or "-"
        out.append(f"  {split.ljust(widths[0])}  {parts}")
    return "\n".join(out)
