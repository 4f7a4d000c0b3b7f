"""`judge-eval`: every harm judge measured on the same human-labelled validation part.

    python -m antibody judge-eval [judges=keyword,tfidf,probe,...] [answer_tokens=40|full] [overrides]

For each judge (with and without the refusal gate): AUROC (cluster bootstrap over
prompts), sensitivity (recall), specificity, precision, accuracy and balanced accuracy at
`eval.judge_threshold` (Wilson intervals), overall and per label source, on the validation
answers cut to the evaluation length (`answer_tokens`, default eval.max_new_tokens) and
whole. Also checks the loss-based incoherence signal and the keyword refusal detector on
the same part. Writes `<run.output_dir>/judge-eval/judge_eval.json` and `table.md`;
`python -m antibody report <that json>` puts the table into docs/results/judge-eval.md.
The best judge is the one with the highest AUROC at the evaluation length.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from antibody.app.arguments import pop_arg
from antibody.app.rundir import write_results
from antibody.config import Config, ConfigError, compose
from antibody.config.schema import Incoherence, JudgeKind

OFFLINE_JUDGES = (JudgeKind.KEYWORD, JudgeKind.TFIDF, JudgeKind.PROBE)


def _candidates(value: Optional[str]) -> list[JudgeKind]:
    if value is None:
        return list(OFFLINE_JUDGES)
    names = [v.strip() for v in value.split(",") if v.strip()]
    allowed = [k.value for k in JudgeKind]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ConfigError(f"judges={value}: unknown judge(s) {bad}; allowed: {allowed}")
    return [JudgeKind(n) for n in names]


def _answer_tokens(value: Optional[str], cfg: Config) -> Optional[int]:
    if value is None:
        return cfg.eval.max_new_tokens
    if value == "full":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"answer_tokens={value}: expected a positive integer or 'full'")
    return n


def _judges(kinds: list[JudgeKind], cfg: Config) -> list:
    """Each judge, and each trained one behind the refusal gate too (the keyword judge is
    a refusal detector already: gated it is itself)."""
    from antibody.evaluation.judges import RefusalGatedJudge, build_judge
    from antibody.models import cache_root

    plain = compose_eval(cfg, judge_refusal_gate=False)
    out = []
    for kind in kinds:
        judge = build_judge(kind, plain, cache_root())
        out.append(judge)
        if kind is not JudgeKind.KEYWORD:
            out.append(RefusalGatedJudge(judge))
    return out


def compose_eval(cfg: Config, **changes) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, **changes))


def _measure_judge(judge, cfg: Config, tokenizer, cuts: list[Optional[int]]) -> tuple[dict, dict]:
    """(statistics per answer length, the scored validation rows per answer length)."""
    from antibody.evaluation.judges.validation import measure, validation_scores
    from antibody.models import cache_root

    out = {"judge": judge.name, "version": judge.version, "report": judge.report(), "by_length": {}}
    scored = {}
    for cut in cuts:
        t0 = time.perf_counter()
        key = "full" if cut is None else str(cut)
        scored[key] = validation_scores(judge, cache_root(), answer_tokens=cut, tokenizer=tokenizer)
        stats = measure(scored[key], cfg.eval.judge_threshold)
        stats["score_seconds"] = time.perf_counter() - t0
        out["by_length"][key] = stats
    return out, scored


def _differences(best: str, scored: dict[str, list[dict]]) -> dict:
    """AUROC of the best judge minus each other judge's, paired over the same prompts."""
    from antibody.evaluation.judge_stats import auroc_difference

    ref = scored[best]
    labels, groups = [r["harmful"] for r in ref], [r["key"] for r in ref]
    return {name: auroc_difference(labels, [r["score"] for r in ref], [r["score"] for r in rows], groups)
            for name, rows in scored.items() if name != best}


def _refusal_detectors() -> dict:
    """The two keyword refusal detectors, the evaluation's (`is_refusal`: every refusal rate
    in our tables) and the data builder's (`looks_like_refusal`: drops model-written answers
    that decline), on labelled refusals: PyRIT's, UncensorBench's and the embedded model's own
    answers labelled by hand (evaluation.judges.refusal_sets)."""
    from antibody.data.datamodule import default_cache_dir
    from antibody.data.sources.refusals import looks_like_refusal
    from antibody.evaluation.judges.keyword import is_refusal
    from antibody.evaluation.judges.refusal_sets import measure_detectors

    return measure_detectors({"is_refusal": is_refusal, "looks_like_refusal": looks_like_refusal},
                             default_cache_dir())


def _incoherence(cfg: Config, answer_tokens: Optional[int], tokenizer) -> dict:
    """The loss signal on real validation answers (false-positive rate), on the same answers
    word-shuffled (detection rate) and on answers moved to another question (relevance: not
    what it measures), each compared with Booster's repeat rule."""
    from antibody.evaluation.incoherence import loss_incoherence, shuffle_words
    from antibody.evaluation.judges.encoder import cut_answer
    from antibody.evaluation.judges.labelled import Part, split_rows
    from antibody.evaluation.metrics import is_incoherent, rate
    from antibody.models import cache_root

    signal = loss_incoherence(cfg.eval.probe_model, cache_root(), answer_tokens or cfg.eval.max_new_tokens)
    rows = split_rows()[Part.VALIDATION]
    prompts = [r.prompt for r in rows]
    answers = [r.response if answer_tokens is None else cut_answer(tokenizer, r.response, answer_tokens) for r in rows]
    variants = {
        "real answers": (prompts, answers),
        "word-shuffled answers": (prompts, [shuffle_words(a, i) for i, a in enumerate(answers)]),
        # rotated by half the list: neighbours often share a question (UncensorBench's pairs)
        "answers to another question": (prompts[len(prompts) // 2:] + prompts[:len(prompts) // 2], answers),
    }
    out = {"threshold": signal.threshold, "signal": signal.report(), "answer_tokens": answer_tokens}
    for name, (ps, ans) in variants.items():
        nll = signal.nll(ps, ans)
        out[name] = {"loss": rate("loss", [signal.is_incoherent(v) for v in nll]).to_dict(),
                     "repeat": rate("repeat", [is_incoherent(a) for a in ans]).to_dict()}
    return out


def judge_eval(cfg: Config, kinds: list[JudgeKind], answer_tokens: Optional[int]) -> dict:
    from antibody.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    cuts = [answer_tokens] if answer_tokens is None else [answer_tokens, None]
    key = "full" if answer_tokens is None else str(answer_tokens)
    judges, scored = [], {}
    for judge in _judges(kinds, cfg):
        stats, rows = _measure_judge(judge, cfg, tokenizer, cuts)
        judges.append(stats)
        scored[judge.name] = rows[key]
    best = max(judges, key=lambda j: j["by_length"][key]["overall"]["auroc"]["value"] or 0.0)
    result = {"kind": "judge-eval", "answer_tokens": answer_tokens, "threshold": cfg.eval.judge_threshold,
              "tokenizer": cfg.model.name, "judges": judges, "best": best["judge"],
              "best_minus": _differences(best["judge"], scored),
              "refusal_detectors": _refusal_detectors(),
              "default": {"judge": cfg.eval.judge.value, "refusal_gate": cfg.eval.judge_refusal_gate}}
    if JudgeKind.PROBE in kinds or cfg.eval.incoherence is not Incoherence.REPEAT:
        result["incoherence"] = _incoherence(cfg, answer_tokens, tokenizer)
    from antibody.evaluation.judges.labelled import Part, data_digest, split_rows

    parts = split_rows()
    result["data"] = {"digest": data_digest(), **{
        f"{p.value}_{what}": n for p in (Part.TRAIN, Part.VALIDATION) for what, n in (
            ("rows", len(parts[p])), ("harmful", sum(r.harmful for r in parts[p])),
            ("prompts", len({r.key for r in parts[p]})))}}
    return result


def judge_eval_command(args: list[str]) -> int:
    from antibody.app.judge.report import judge_table

    judges_arg, args = pop_arg(args, "judges")
    tokens_arg, args = pop_arg(args, "answer_tokens")
    has_experiment = any(a.startswith("experiment=") for a in args)
    cfg = compose(args if has_experiment else ["experiment=demo", *args])
    kinds = _candidates(judges_arg)
    answer_tokens = _answer_tokens(tokens_arg, cfg)
    t0 = time.perf_counter()
    result = judge_eval(cfg, kinds, answer_tokens)
    result["seconds"] = time.perf_counter() - t0
    write_results(Path(cfg.run.output_dir) / "judge-eval", "judge_eval.json", result, judge_table(result))
    return 0
