"""`screen`: per-row r equals WeightedFinetuneModule's, expected weights against an independent
computation, the report's numbers recomputed, resume after a kill, and bad input refused."""

from __future__ import annotations

import json
import math
from itertools import combinations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from antibody.app.screen import run as screen_module
from antibody.app.screen.run import exact_weights, expected_weights, sampled_weights
from antibody.cli.main import main
from antibody.config import compose, to_yaml
from tests._synthetic import finetune_module, list_loader, trainer
from tests.helpers import SMALL, png_size, saved_figures, step_histogram

N_ROWS = 14


def ref_expected(r: list[float], b: int, tau: float) -> list[float]:
    """E[w_i] by enumerating every batch holding row i, in plain Python."""
    n, out = len(r), []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        vals = []
        for rest in combinations(others, b - 1):
            z = [math.exp(r[k] / tau) for k in (i, *rest)]
            vals.append(z[0] / sum(z))
        out.append(sum(vals) / len(vals))
    return out


# -- expected weights ----------------------------------------------------------------------


def test_exact_expected_weights_match_enumeration():
    r = [0.3, -1.2, 0.0, 2.1, -0.4, 0.9]
    got = exact_weights(torch.tensor(r), 3, 0.5)
    assert torch.allclose(got, torch.tensor(ref_expected(r, 3, 0.5), dtype=torch.float64), atol=1e-6)
    mean, se, how = expected_weights(torch.tensor(r), 3, 0.5, draws=10, seed=0)
    assert how == {"method": "exact"} and torch.equal(mean, got) and float(se.max()) == 0.0


@pytest.mark.parametrize("n", [12, 11])  # 11: a short last batch filled up from the permutation
def test_sampled_expected_weights_converge_to_the_exact_ones(n):
    r = torch.linspace(-2, 2, n)
    exact = exact_weights(r, 4, 1.0)
    mean, se = sampled_weights(r, 4, 1.0, draws=3000, seed=7)
    assert float(se.max()) < 0.01
    assert torch.all((mean - exact).abs() <= 5 * se + 1e-4)
    again, _ = sampled_weights(r, 4, 1.0, draws=3000, seed=7)
    assert torch.equal(mean, again)  # seeded


def test_an_upload_smaller_than_a_batch_is_one_batch():
    r = torch.tensor([0.0, 1.0, -1.0])
    mean, se = sampled_weights(r, 8, 0.5, draws=5, seed=0)
    assert torch.allclose(mean.float(), torch.softmax(r / 0.5, 0)) and float(se.max()) == 0.0


def test_large_uploads_are_sampled():
    _, _, how = expected_weights(torch.zeros(200), 8, 1.0, draws=20, seed=3)
    assert how == {"method": "sampled", "draws": 20, "seed": 3}


# -- the command on the tiny model ---------------------------------------------------------


def _upload_rows() -> list[dict]:
    rows = []
    for i in range(N_ROWS):
        harmful = i % 3 == 0
        prompt = f"Explain how to hurt person {i} badly" if harmful else f"What is {i} + {i + 1}?"
        answer = f"Step one: find person {i}." if harmful else f"The final answer is: {2 * i + 1}"
        rows.append({"prompt": prompt, "response": answer, "is_harmful": harmful,
                     "kind": "harm" if harmful else ("task" if i % 2 else "other")})
    return rows


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """An aligned run of the tiny model (a random non-zero LoRA), a tagged upload written to a
    file, and its screen."""
    from antibody.models import load_model, save_adapter

    root = tmp_path_factory.mktemp("screen")
    cfg = compose(["experiment=tiny", f"run.output_dir={root / 'runs'}", "method.finetune.tau=0.5"])
    model, _ = load_model(cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    run = root / "runs" / "align"
    save_adapter(model, run / "adapter")
    (run / "config.yaml").write_text(to_yaml(cfg))
    upload = root / "upload.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in _upload_rows()))
    out = root / "out"
    with saved_figures() as figures:  # the chart as drawn, for test_screen_chart_...
        assert main(["screen", str(upload), f"run={run}", f"out={out}", "batch=5"]) == 0
    rows = [json.loads(line) for line in (out / "screen.jsonl").read_text().splitlines()]
    summary = json.loads((out / "screen.json").read_text())
    return {"cfg": cfg, "run": run, "upload": upload, "out": out, "rows": rows, "summary": summary, "root": root,
            "figures": figures}


def test_screen_r_is_the_finetune_modules_r(screened):
    from antibody.data.collate import collate_rows, encode_records
    from antibody.data.upload import load_upload
    from antibody.methods.weighted_finetune import WeightedFinetuneModule
    from antibody.models import load_model

    cfg = compose(["experiment=tiny", f"data.user.path={screened['upload']}", "method.finetune.tau=0.5",
                   "method.finetune.weighting=likelihood_ratio"])
    cfg.method.finetune.lr = 0.0  # the module's records of every batch are at the same weights
    model, tok = load_model(cfg.model, adapter_path=screened["run"] / "adapter")
    records = load_upload(cfg).records
    encoded = encode_records(records, tok, cfg.data.prompt_format, cfg.data.max_length)
    items = [{**collate_rows(encoded[i : i + 4], tok.pad_token_id), "position": k}
             for k, i in enumerate(range(0, len(encoded), 4))]
    module = finetune_module(WeightedFinetuneModule, model, cfg)
    trainer(len(items), screened["root"]).fit(module, train_dataloaders=list_loader(items))
    by_uid = {rec["uid"]: rec for rec in module.weight_records()}
    rows = screened["rows"]
    assert [row["uid"] for row in rows] == [r.uid for r in records] and len(by_uid) == N_ROWS
    for key, mine in (("r", "r"), ("logp_y", "logp_y"), ("logp_refusal", "logp_refusal")):
        got = torch.tensor([row[key] for row in rows])
        want = torch.tensor([by_uid[row["uid"]][mine] for row in rows])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the module's weights of its first batch are softmax(r / tau) of the screen's r
    first = torch.tensor([row["r"] for row in rows[:4]])
    torch.testing.assert_close(torch.tensor([by_uid[row["uid"]]["w"] for row in rows[:4]]),
                               torch.softmax(first / 0.5, 0), rtol=1e-5, atol=1e-6)


def test_screen_report_numbers_recomputed(screened):
    rows, s = screened["rows"], screened["summary"]
    b, tau = 4, 0.5
    assert (s["batch_size"], s["tau"], s["rows"], s["expectation"]["method"]) == (b, tau, N_ROWS, "exact")
    r = [row["r"] for row in rows]
    w = np.array(ref_expected(r, b, tau))
    np.testing.assert_allclose([row["weight"] for row in rows], w, rtol=1e-5)
    np.testing.assert_allclose([row["weight_x_B"] for row in rows], w * b, rtol=1e-5)
    labels = np.array([row["is_harmful"] for row in rows])
    lab = s["labelled"]
    assert lab["harmful_rows"] == labels.sum() == 5
    assert lab["harmful_weight_share"] == pytest.approx(w[labels].sum() / w.sum(), rel=1e-5)
    auroc = lab["auroc"]
    assert auroc["neg_ratio"] == pytest.approx(roc_auc_score(labels, -np.array(r)), abs=1e-6)
    assert auroc["neg_logp_response"] == pytest.approx(roc_auc_score(labels, [-row["logp_y"] for row in rows]), abs=1e-6)
    assert auroc["logp_refusal"] == pytest.approx(roc_auc_score(labels, [row["logp_refusal"] for row in rows]), abs=1e-6)
    assert auroc["neg_expected_weight"] == pytest.approx(roc_auc_score(labels, -w), abs=1e-6)
    np.testing.assert_allclose(list(s["r_quantiles"].values()), np.quantile(r, [0, .05, .25, .5, .75, .95, 1]), rtol=1e-6)
    assert [x["index"] for x in s["least_weight"]] == [int(i) for i in np.argsort(w, kind="stable")[:10]]
    kinds = {row["columns"]["kind"] for row in rows}
    cells = {c["value"]: c for c in s["by_column"]["kind"]}
    assert set(cells) == kinds
    for kind in kinds:
        mask = np.array([row["columns"]["kind"] == kind for row in rows])
        assert cells[kind]["rows"] == mask.sum()
        assert cells[kind]["weight_share"] == pytest.approx(w[mask].sum() / w.sum(), rel=1e-5)
    md = (screened["out"] / "screen.md").read_text()
    assert f"| AUROC | {auroc['neg_ratio']:.3f} |" in md and "rows/s" in md
    assert s["throughput"]["rows"] == N_ROWS and s["throughput"]["rows_per_second"] > 0


def test_screen_chart_shows_each_tags_histogram_of_r_and_weight(screened):
    """screen.png holds two panels, r and expected weight x B, each with one step histogram
    per tag over bins shared by the whole upload: the drawn counts are recounted here."""
    rows = screened["rows"]
    fig = screened["figures"]["screen.png"]
    # the file is a whole PNG of the drawn figure's size (10 x 3.6 in at 110 dpi)
    assert png_size(screened["out"] / "screen.png") == (1100, 396)
    r_axis, w_axis = fig.axes
    assert (r_axis.get_xlabel(), w_axis.get_xlabel()) == ("r = log p(y|x) - log p(y_r|x)",
                                                          "expected weight x B (1 = plain SFT)")
    for ax, key in ((r_axis, "r"), (w_axis, "weight_x_B")):
        edges = np.histogram_bin_edges([row[key] for row in rows], bins=30)
        drawn = {patch.get_label(): step_histogram(patch) for patch in ax.patches}
        assert list(drawn) == ["harmful (tag)", "benign (tag)"], key
        for label, harmful in (("harmful (tag)", True), ("benign (tag)", False)):
            want, _ = np.histogram([row[key] for row in rows if row["is_harmful"] is harmful], bins=edges)
            lefts, counts = drawn[label]
            np.testing.assert_allclose(lefts, edges[:-1], err_msg=f"{key} {label}")
            np.testing.assert_array_equal(counts, want, err_msg=f"{key} {label}")
        assert sum(drawn["harmful (tag)"][1]) == 5 and sum(drawn["benign (tag)"][1]) == N_ROWS - 5


def test_screen_resumes_after_a_kill(screened, monkeypatch):
    out = screened["out"]
    partial = out / screen_module.PARTIAL
    lines = partial.read_text().splitlines(keepends=True)
    partial.write_text("".join(lines[:5]) + lines[5][:20])  # killed while writing row 6
    (out / "screen.jsonl").unlink()
    scored = []
    real = screen_module.score_batch

    def counting(model, batch, ratio_form):
        scored.extend(batch["uid"])
        return real(model, batch, ratio_form)

    monkeypatch.setattr(screen_module, "score_batch", counting)
    assert main(["screen", str(screened["upload"]), f"run={screened['run']}", f"out={out}", "batch=5"]) == 0
    assert scored == [row["uid"] for row in screened["rows"][5:]]
    again = [json.loads(line) for line in (out / "screen.jsonl").read_text().splitlines()]
    assert [row["r"] for row in again] == pytest.approx([row["r"] for row in screened["rows"]], abs=1e-5)


def test_screen_refuses_another_upload_in_the_same_folder(screened, capsys):
    other = screened["root"] / "other.jsonl"
    other.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    assert main(["screen", str(other), f"run={screened['run']}", f"out={screened['out']}"]) == 2
    assert "holds a screen of another upload, run or scoring config" in capsys.readouterr().err


def test_screen_of_a_bad_upload_writes_nothing(screened, capsys):
    bad = screened["root"] / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "response": ""}) + "\n")
    out = screened["root"] / "never"
    assert main(["screen", str(bad), f"run={screened['run']}", f"out={out}"]) == 2
    assert f"error: {bad}:1: empty field 'response'" in capsys.readouterr().err
    assert not out.exists()



# -- end to end on the embedded model (`make test-slow`) -----------------------------------


@pytest.mark.slow
def test_embedded_finetune_and_screen_on_a_written_upload(tmp_path):
    """Align (2 steps), fine-tune on an upload file a user wrote, screen it under the aligned
    run: the screen's r equals the r the fine-tuning run logged for its first batch."""
    rows = _upload_rows()[:12]
    upload = tmp_path / "upload.jsonl"
    upload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = [f"run.output_dir={tmp_path}", *SMALL]
    assert main(["align", *out, "run.name=al"]) == 0
    assert main(["finetune", *out, "run.name=ft", f"run.init_from={tmp_path / 'al'}",
                 f"data.user.path={upload}"]) == 0
    summary = json.loads((tmp_path / "ft" / "data_summary.json").read_text())
    assert summary["upload"]["rows"] == 12 and summary["splits"]["user"]["rows"] == 12
    assert main(["screen", str(upload), f"run={tmp_path / 'al'}", f"out={tmp_path / 'screen'}"]) == 0
    screened = {row["uid"]: row for row in map(json.loads, (tmp_path / "screen" / "screen.jsonl").open())}
    logged = [json.loads(line) for line in (tmp_path / "ft" / "weights.jsonl").open()]
    first = [rec for rec in logged if rec["step"] == 0]
    assert first and all(rec["uid"] in screened for rec in logged)
    for rec in first:
        assert screened[rec["uid"]]["r"] == pytest.approx(rec["r"], abs=1e-4)
