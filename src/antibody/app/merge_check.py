"""`merge-check`: what folding a run's adapter into its base does to the model.

    python -m antibody merge-check run=<run> [model.quantization=nf4] [n=32]

peft merges an adapter into a 4-bit base by dequantising, adding the delta and
quantising again; a delta under half a quantisation step is rounded away. This command
measures that on a finished run: the same adapter on the same base, computed unmerged
(the adapter beside the base weights, as training saw it) and merged, on the first ``n``
harmful evaluation prompts. It reports the change of the next-token logits at the start
of the answer (against the adapter's own effect on them, the base with the adapter off),
the KL divergence and top-1 agreement of those distributions, how many greedy answers
change, and the keyword refusals of each. It is why ``models.adapters.merges_exactly``
keeps adapters stacked on such bases (docs/gpu.md, "Merging into a 4-bit base").

Writes ``<run>/merge_check.json`` (``kind: merge-check``), one row per base it was run on
(a rerun on the same base replaces its row), which ``python -m antibody report <file>
docs/gpu.md`` renders into its marked block.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from antibody.app.arguments import pop_arg
from antibody.config import Config, ConfigError
from antibody.config.compose import apply_overrides, load_saved
from antibody.infra.files import atomic_write_json

DEFAULT_PROMPTS = 32
RESULTS_FILE = "merge_check.json"


@dataclass(frozen=True)
class MergeEffect:
    """One adapter, unmerged vs merged, on ``prompts`` harmful evaluation prompts."""

    run: str
    model: str
    quantization: str
    dtype: str
    prompts: int
    max_new_tokens: int
    logit_max_abs_change: float  # max over prompts and vocabulary, next token at the answer's start
    logit_change_over_effect: float  # ||merged - unmerged|| / ||unmerged - base|| (1: as far as the adapter)
    kl_unmerged_to_merged: float  # mean over prompts, nats
    top1_agreement: float  # share of prompts whose most likely first answer token is the same
    answers_changed: int  # greedy answers that differ in any character
    refusals_base: int
    refusals_unmerged: int
    refusals_merged: int


def _next_token_logits(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Logits of the first answer token of each prompt (one at a time: no padding effects)."""
    from antibody.data.formatting import special_prefix
    from antibody.evaluation.generation import _encode

    prefix = special_prefix(tokenizer)
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = torch.tensor([_encode(tokenizer, prompt, prefix)], device=device)
            rows.append(model(input_ids=ids).logits[0, -1].float().cpu())
    return torch.stack(rows)


def _answers(model, tokenizer, prompts: list[str], cfg: Config) -> list[str]:
    from antibody.evaluation.generation import generate

    return generate(model, tokenizer, prompts, max_new_tokens=cfg.eval.max_new_tokens,
                    batch_size=cfg.eval.batch_size)


def merge_effect(cfg: Config, run: Path, n_prompts: int = DEFAULT_PROMPTS, prompts_cfg: Config | None = None
                 ) -> MergeEffect:
    """Measure the merge of ``run``'s adapter into the base ``cfg.model`` loads, on the
    harmful evaluation prompts of ``prompts_cfg`` (default ``cfg``): the run's own config, so
    that another base dtype does not rebuild the model-written data its key depends on."""
    from antibody.app.evaluate import eval_records
    from antibody.data.formatting import format_prompt
    from antibody.evaluation.judges.keyword import is_refusal
    from antibody.evaluation.tasks import EvalTaskName
    from antibody.models import load_model, load_tokenizer, merge_adapter

    tokenizer = load_tokenizer(cfg.model)
    records = eval_records(prompts_cfg or cfg, tokenizer)[EvalTaskName.HARMFUL.value][:n_prompts]
    prompts = [format_prompt(rec, tokenizer, cfg.data.prompt_format) for rec in records]
    from antibody.models.placement import inference_device

    model, _ = load_model(cfg.model, adapter_path=run / "adapter", device=inference_device(cfg.trainer.accelerator),
                          inference=True)
    model.eval()
    with model.disable_adapter():
        base_logits = _next_token_logits(model, tokenizer, prompts)
        base_answers = _answers(model, tokenizer, prompts, cfg)
    unmerged_logits = _next_token_logits(model, tokenizer, prompts)
    unmerged_answers = _answers(model, tokenizer, prompts, cfg)
    merged = merge_adapter(model).eval()
    merged_logits = _next_token_logits(merged, tokenizer, prompts)
    merged_answers = _answers(merged, tokenizer, prompts, cfg)

    change = merged_logits - unmerged_logits
    log_p, log_q = unmerged_logits.log_softmax(-1), merged_logits.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)  # >= 0; rounding gave -1e-8 on equal rows
    return MergeEffect(
        run=str(run), model=cfg.model.name, quantization=cfg.model.quantization.value, dtype=cfg.model.dtype,
        prompts=len(prompts), max_new_tokens=cfg.eval.max_new_tokens,
        logit_max_abs_change=float(change.abs().max()),
        logit_change_over_effect=float(change.norm() / (unmerged_logits - base_logits).norm()),
        kl_unmerged_to_merged=float(kl.mean()),
        top1_agreement=float((unmerged_logits.argmax(-1) == merged_logits.argmax(-1)).float().mean()),
        answers_changed=sum(a != b for a, b in zip(unmerged_answers, merged_answers, strict=True)),
        refusals_base=sum(map(is_refusal, base_answers)),
        refusals_unmerged=sum(map(is_refusal, unmerged_answers)),
        refusals_merged=sum(map(is_refusal, merged_answers)),
    )


def merge_check_table(results: dict) -> str:
    """The measurements of a merge-check file (one row per base it was run on)."""
    lines = [
        "Generated by `python -m antibody report` from `merge-check` results: one adapter, computed "
        "unmerged (beside the base weights) and merged into them, on the same prompts. Logits: the "
        "first answer token of each harmful evaluation prompt; change / effect is ||merged - "
        "unmerged|| / ||unmerged - base|| (1.0: the merge moved the model as far as the whole "
        "adapter did). Refusals: keyword detector on greedy answers.",
        "",
        "| run | base | prompts | max abs logit change | change / effect | KL (nats) | top-1 agreement "
        "| greedy answers changed | refusals base / unmerged / merged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {Path(r['run']).name} | {r['model']} {r['quantization']} ({r['dtype']}) | {r['prompts']} | "
            f"{r['logit_max_abs_change']:.3g} | {r['logit_change_over_effect']:.2f} | "
            f"{r['kl_unmerged_to_merged']:.3g} | {r['top1_agreement']:.2f} | "
            f"{r['answers_changed']}/{r['prompts']} | {r['refusals_base']} / {r['refusals_unmerged']} / "
            f"{r['refusals_merged']} |"
        )
    return "\n".join(lines)


def merge_check_command(args: list[str]) -> int:
    value, rest = pop_arg(args, "run")
    n_value, rest = pop_arg(rest, "n")
    if value is None:
        raise ConfigError("merge-check: name a finished run: merge-check run=<path> [key=value ...]")
    run = Path(value)
    if not (run / "config.yaml").is_file() or not (run / "adapter").is_dir():
        raise ConfigError(f"run={run}: not a finished run (needs config.yaml and adapter/)")
    from antibody.app.stages import read_base_adapters

    if read_base_adapters(run):
        raise ConfigError(f"run={run}: its adapter sits on other adapters (base_adapters.json); merge-check "
                          "measures an adapter directly on the base model: give it the alignment run")
    try:
        n_prompts = int(n_value) if n_value is not None else DEFAULT_PROMPTS
    except ValueError:
        raise ConfigError(f"n={n_value!r}: the number of prompts must be an integer >= 1") from None
    if n_prompts < 1:
        raise ConfigError(f"n={n_prompts}: the number of prompts must be >= 1")
    saved = load_saved(run / "config.yaml")
    cfg = apply_overrides(saved, rest)
    effect = merge_effect(cfg, run, n_prompts, prompts_cfg=saved)
    out = run / RESULTS_FILE
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    row = asdict(effect)
    same_base = ("quantization", "dtype")
    rows = [r for r in rows if any(r[k] != row[k] for k in same_base)] + [row]
    results = {"kind": "merge-check", "rows": rows}
    atomic_write_json(out, results)
    print(merge_check_table(results))
    print(f"[antibody] wrote {out}")
    return 0
