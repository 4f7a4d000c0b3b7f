"""`screen`: score every row of an upload under an aligned model before any GPU time is spent.

    python -m antibody screen upload.jsonl run=<aligned run> [out=<dir>] [draws=N] [seed=N]
        [batch=N] [into=<markdown file> block=<name>] [key=value ...]

Per row (no gradient, batches of `batch`, default data.eval_batch_size): log p(y|x) of its
own response, log p(y_r|x) of its refusal view and r = log p(y|x) - log p(y_r|x), computed
by the fine-tuning stage's own functions (`sequence_nll`, `row_logprob` with
method.finetune.ratio_form, the `likelihood_ratio` rule's score), so a row's r is the r
`WeightedFinetuneModule` computes for it (tests/test_screen.py). Always the Antibody score,
whatever weighting the run's config names: the screen asks what Antibody would do.

Expected weight (`expected_weights`): the mean of w_i = softmax(r / tau)_i over batches of
B = data.finetune_batch_size rows that contain row i, the other B - 1 rows drawn uniformly
without replacement from the rest of the upload (tau = method.finetune.tau). Exact (every
(B-1)-subset enumerated) when n * C(n-1, B-1) <= EXACT_LIMIT; otherwise sampled: `draws`
random permutations of the upload (default 1000, torch.Generator seeded by `seed`, default
data.seed), each cut into batches of B (a short last batch is filled up with the first rows
of the same permutation, which are not recorded twice), so every row gets one draw per
permutation and its standard error is reported. An upload of fewer than B rows is one batch
of all its rows, as the training sampler makes it. Weights are also given times B (1.00 = the
uniform weight of plain SFT).

Outputs in `out` (default <run.output_dir>/screen-<upload stem>-<run name>): `screen.jsonl`
(one line per row, upload order), `screen.json` (the report's numbers), `screen.md`,
`screen.png`. Resumable: scores are appended to `scores.partial.jsonl` after each batch and
a rerun with the same upload, run and scoring config continues after the last complete line
(a different one is refused; nothing is overwritten). tau, B and draws are not part of that
key: changing them re-weights the stored scores without scoring again. The report:
screen.report.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from itertools import combinations
from pathlib import Path
from typing import Optional

import torch

from antibody.app.arguments import pop_arg
from antibody.app.screen.report import markdown, plot, summarise
from antibody.config import Config, ConfigError, to_container
from antibody.infra.files import append_jsonl, atomic_write_json, atomic_write_jsonl, atomic_write_text

EXACT_LIMIT = 2_000_000  # subset evaluations for the exact expectation (ours: about a second)
DEFAULT_DRAWS = 1000  # permutations for the sampled expectation (ours: SE ~3% of a weight)
PARTIAL = "scores.partial.jsonl"
FINGERPRINT = "screen.key.json"


# ---------------------------------------------------------------------------
# scoring (the fine-tuning stage's own functions)
# ---------------------------------------------------------------------------


def score_batch(model, batch: dict, ratio_form) -> dict[str, torch.Tensor]:
    """log p(y|x), log p(y_r|x) and r of one collated batch, as WeightedFinetuneModule
    computes them (no gradient): methods/scoring.py."""
    from antibody.methods.scoring import ratio_scores

    return ratio_scores(model, batch, ratio_form)


def score_rows(model, encoded: list, ratio_form, batch_size: int, pad_token_id: int, start: int = 0,
               on_batch=None, device=None) -> list[dict]:
    """Scores of encoded rows [start:], in order; `on_batch(rows)` after each batch."""
    from antibody.data.collate import collate_rows

    out: list[dict] = []
    for lo in range(start, len(encoded), batch_size):
        chunk = encoded[lo : lo + batch_size]
        batch = collate_rows(chunk, pad_token_id)
        if device is not None:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        scores = score_batch(model, batch, ratio_form)
        rows = [
            {"index": row.index, "uid": row.uid, "logp_y": float(scores["logp_y"][i]),
             "logp_refusal": float(scores["logp_refusal"][i]), "r": float(scores["r"][i])}
            for i, row in enumerate(chunk)
        ]
        out += rows
        if on_batch is not None:
            on_batch(rows)
    return out


# ---------------------------------------------------------------------------
# expected weights
# ---------------------------------------------------------------------------


def _softmax(scores: torch.Tensor, tau: float) -> torch.Tensor:
    # the likelihood_ratio rule's softmax (WeightingRule.weights), over the last dimension
    return torch.softmax(scores.float() / tau, dim=-1)


def exact_weights(r: torch.Tensor, batch_size: int, tau: float) -> torch.Tensor:
    """E[w_i] over every (B-1)-subset of the other rows (all equally likely)."""
    n = r.shape[0]
    if n <= batch_size:
        return _softmax(r, tau)
    out = torch.empty(n, dtype=torch.float64)
    subsets = torch.tensor(list(combinations(range(n - 1), batch_size - 1)), dtype=torch.long)
    for i in range(n):
        others = torch.tensor([j for j in range(n) if j != i], dtype=torch.long)
        members = torch.cat([torch.full((subsets.shape[0], 1), i), others[subsets]], dim=1)
        out[i] = _softmax(r[members], tau)[:, 0].double().mean()
    return out


def sampled_weights(r: torch.Tensor, batch_size: int, tau: float, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard error) of w_i over `draws` random permutations cut into batches."""
    n = r.shape[0]
    if n <= batch_size:
        w = _softmax(r, tau).double()
        return w, torch.zeros(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    full, rest = divmod(n, batch_size)
    total = torch.zeros(n, dtype=torch.float64)
    squares = torch.zeros(n, dtype=torch.float64)
    for _ in range(draws):
        perm = torch.randperm(n, generator=gen)
        batches = perm[: full * batch_size].view(full, batch_size)
        if rest:  # the short last batch, filled up with rows recorded elsewhere
            last = torch.cat([perm[full * batch_size :], perm[: batch_size - rest]])
            batches = torch.cat([batches, last.view(1, batch_size)])
        w = _softmax(r[batches], tau).double()
        idx, w = batches.reshape(-1)[:n], w.reshape(-1)[:n]
        total.index_add_(0, idx, w)
        squares.index_add_(0, idx, w * w)
    mean = total / draws
    var = (squares / draws - mean * mean).clamp_min(0.0) * draws / max(draws - 1, 1)
    return mean, (var / draws).sqrt()


def expected_weights(r: torch.Tensor, batch_size: int, tau: float, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(mean weight, its standard error, how it was computed); see the module docstring."""
    n = r.shape[0]
    subsets = math.comb(n - 1, batch_size - 1) if n > batch_size else 1
    if n * subsets * batch_size <= EXACT_LIMIT:
        return exact_weights(r, batch_size, tau), torch.zeros(n, dtype=torch.float64), {"method": "exact"}
    mean, se = sampled_weights(r, batch_size, tau, draws, seed)
    return mean, se, {"method": "sampled", "draws": draws, "seed": seed}


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


def _read_partial(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # a kill mid-write: the partial last line is dropped
        rows.append(json.loads(line))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def _key(cfg: Config, upload, run: Path) -> dict:
    """What the stored scores depend on (not tau, B or draws: they only re-weight)."""
    from antibody.models.precision import BF16_MIXED

    c = to_container(cfg)
    return {
        "upload": upload.report.path,
        "upload_sha256": upload.report.sha256,
        "rows": [r.uid for r in upload.records],
        "run": str(run.resolve()),
        "model": c["model"],
        "data": {k: c["data"][k] for k in ("prompt_format", "max_length")} | {"user": c["data"]["user"]},
        "ratio_form": c["method"]["finetune"]["ratio_form"],
        # scores under bf16 autocast are other numbers; fp32 screens keep their old key
        **({"precision": cfg.trainer.precision} if cfg.trainer.precision in BF16_MIXED else {}),
    }


def _digest(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def screen(cfg: Config, run: Path, out: Optional[Path] = None, *, draws: int = DEFAULT_DRAWS,
           seed: Optional[int] = None, batch: Optional[int] = None) -> dict:
    """Validate the upload (before any model loads or file is written), score it, write the
    outputs; returns the summary."""
    from antibody.data.upload import load_upload
    from antibody.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    upload = load_upload(cfg, tokenizer)
    for line in upload.report.lines():
        print(f"[antibody] {line}")
    if out is None:
        out = Path(cfg.run.output_dir) / f"screen-{Path(upload.report.path).stem}-{run.name}"
    seed = cfg.data.seed if seed is None else seed
    batch = batch or cfg.data.eval_batch_size
    key = _key(cfg, upload, run)
    key_path = out / FINGERPRINT
    if key_path.is_file() and json.loads(key_path.read_text()).get("digest") != _digest(key):
        raise ConfigError(f"out={out}: holds a screen of another upload, run or scoring config; "
                          "choose another out= (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    if not key_path.is_file():
        atomic_write_json(key_path, {"digest": _digest(key), "key": key, "seconds": 0.0, "scored": 0})
    state = json.loads(key_path.read_text())

    from antibody.data.collate import encode_records, pad_token_id_of

    encoded = encode_records(upload.records, tokenizer, cfg.data.prompt_format, cfg.data.max_length)
    done = _read_partial(out / PARTIAL)
    from antibody.models.placement import inference_device

    device = inference_device(cfg.trainer.accelerator)
    if len(done) < len(encoded):
        scores = _score(cfg, run, encoded, done, out, batch, pad_token_id_of(tokenizer), device, state)
        atomic_write_json(key_path, state)
    else:
        scores = done
    return _finish(cfg, upload, scores, out, run, draws=draws, seed=seed, state=state, batch=batch, device=device)


def _score(cfg, run, encoded, done, out, batch, pad_id, device, state) -> list[dict]:
    from antibody.app.rundir import read_base_adapters
    from antibody.infra import progress
    from antibody.models import load_model
    from antibody.models.precision import cast_for_inference, inference_autocast

    model, _ = load_model(cfg.model, adapter_path=run / "adapter", base_adapters=read_base_adapters(run), device=device,
                          inference=True)
    model = cast_for_inference(model.eval(), cfg.trainer.precision)
    start = len(done)
    if start:
        print(f"[antibody] resuming the screen at row {start} of {len(encoded)}")
    t0 = time.perf_counter()
    with progress.task("screening the upload", total=len(encoded)) as bar:
        bar.update(completed=start)

        def save(rows: list[dict]) -> None:
            append_jsonl(out / PARTIAL, rows)
            bar.advance(len(rows))
            state["seconds"] += time.perf_counter() - save.t  # type: ignore[attr-defined]
            state["scored"] += len(rows)
            state["device"] = str(device)
            save.t = time.perf_counter()  # type: ignore[attr-defined]

        save.t = t0  # type: ignore[attr-defined]
        with inference_autocast(cfg.trainer.precision, device):  # models/precision.py
            new = score_rows(model, encoded, cfg.method.finetune.ratio_form, batch, pad_id, start, save, device)
    return done + new


def _finish(cfg, upload, scores, out, run, *, draws, seed, state, batch, device) -> dict:
    ft, size = cfg.method.finetune, cfg.data.finetune_batch_size
    r = torch.tensor([s["r"] for s in scores], dtype=torch.float32)
    mean, se, how = expected_weights(r, size, ft.tau, draws, seed)
    how["max_se_x_B"] = float(se.max()) * size
    rows = []
    for rec, s, w in zip(upload.records, scores, mean.tolist(), strict=True):
        row = {"index": s["index"], "where": rec.meta["where"], "uid": rec.uid, "prompt": rec.instruction,
               "response": rec.response, "refusal": rec.refusal, "logp_y": s["logp_y"],
               "logp_refusal": s["logp_refusal"], "r": s["r"], "weight": w, "weight_x_B": w * size,
               "columns": rec.meta["columns"]}
        if upload.report.tagged:
            row["is_harmful"] = rec.is_harmful
        rows.append(row)
    rate = state["scored"] / state["seconds"] if state["seconds"] else float("nan")
    summary = {
        "upload": upload.report.path, "upload_sha256": upload.report.sha256, "run": str(run),
        "tau": ft.tau, "batch_size": size, "ratio_form": ft.ratio_form.value, "expectation": how,
        "throughput": {"rows": state["scored"], "seconds": state["seconds"], "rows_per_second": rate,
                       "device": state.get("device", str(device)), "batch": batch},
        **summarise(rows, size),
    }
    atomic_write_jsonl(out / "screen.jsonl", rows)
    atomic_write_json(out / "screen.json", summary)
    atomic_write_text(out / "screen.md", markdown(summary) + "\n")
    plot(rows, out / "screen.png")
    return summary


def _int(value: Optional[str], name: str) -> Optional[int]:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"screen: {name}={value!r} is not an integer") from None
    if number < (0 if name == "seed" else 1):
        raise ConfigError(f"screen: {name}={number} must be positive")
    return number


def screen_command(args: list[str]) -> int:
    from antibody.app.rundir import resolve_init_from
    from antibody.config.compose import apply_overrides, load_saved
    from antibody.config.schema import RunConfig

    run_value, args = pop_arg(args, "run")
    out, args = pop_arg(args, "out")
    draws, args = pop_arg(args, "draws")
    seed, args = pop_arg(args, "seed")
    batch, args = pop_arg(args, "batch")
    into, args = pop_arg(args, "into")
    block, args = pop_arg(args, "block")
    files = [a for a in args if "=" not in a]
    if len(files) != 1 or run_value is None:
        raise ConfigError("screen: usage: python -m antibody screen <upload file or hub id> run=<aligned run> [key=value ...]")
    run = resolve_init_from(run_value, RunConfig().output_dir)
    overrides = [a for a in args if "=" in a] + [f"data.user.path={files[0]}"]
    cfg = apply_overrides(load_saved(run / "config.yaml"), overrides)
    summary = screen(cfg, run, Path(out) if out else None, draws=_int(draws, "draws") or DEFAULT_DRAWS,
                     seed=_int(seed, "seed"), batch=_int(batch, "batch"))
    folder = Path(out) if out else Path(cfg.run.output_dir) / f"screen-{Path(summary['upload']).stem}-{run.name}"
    print(markdown(summary))
    print(f"[antibody] wrote {folder}/screen.jsonl, screen.json, screen.md and screen.png")
    if into:
        from antibody.app.report import update_block

        update_block(Path(into), markdown(summary), block or "screen")
        print(f"[antibody] updated the '{block or 'screen'}' block of {into}")
    return 0
