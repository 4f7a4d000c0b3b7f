"""End to end through the CLI on the tiny model: align -> finetune -> eval, and the demo."""

from __future__ import annotations

import json

import pytest

from antibody.cli.main import main

TINY = ["experiment=tiny", "trainer.checkpoint_every_n_steps=2"]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "runs"


def test_align_finetune_eval_cli(out, capsys):
    base = [*TINY, f"run.output_dir={out}"]
    assert main(["align", *base, "run.name=al", "method.align.rho=0.3"]) == 0
    al = out / "al"
    for name in ("config.yaml", "adapter", "checkpoints/last.ckpt", "metrics.json", "data_summary.json", "DONE"):
        assert (al / name).exists(), name
    m = json.loads((al / "metrics.json").read_text())
    assert m["steps"] == 3 and m["seconds_per_step"] > 0
    assert "align/lambda_t" in m["final"]

    # finetune from "latest": the newest finished alignment run
    assert main(["finetune", *base, "run.name=ft", "run.init_from=latest"]) == 0
    ft = out / "ft"
    m = json.loads((ft / "metrics.json").read_text())
    assert m["init_from"] == str(al)
    rows = [json.loads(line) for line in (ft / "weights.jsonl").read_text().splitlines()]
    assert rows and {"uid", "source", "is_harmful", "w", "r"} <= set(rows[0])
    assert any(r["is_harmful"] for r in rows)

    # a finished run is never overwritten
    assert main(["finetune", *base, "run.name=ft", "run.init_from=latest"]) == 2
    assert "already holds a finished finetune run" in capsys.readouterr().err

    assert main(["eval", f"run={ft}"]) == 0
    metrics = json.loads((ft / "eval" / "metrics.json").read_text())
    assert {"harmful/harmful_score", "harmful/refusal_rate", "benign/over_refusal", "arithmetic/accuracy"} <= set(
        metrics["metrics"]
    )
    assert metrics["metrics"]["harmful/harmful_score"]["n"] == 8
    assert metrics["eval_seconds"] > 0


def test_killed_stage_resumes_from_last_checkpoint(out):
    """A run stopped after its step-2 checkpoint continues to the same final step."""
    base = [*TINY, f"run.output_dir={out}", "run.name=r", "method=sft"]
    assert main(["align", *base, "method.align.max_steps=2"]) == 0  # stands in for the killed run
    run = out / "r"
    (run / "DONE").unlink()  # as if killed before finishing; the step-2 checkpoint remains
    cfg_text = (run / "config.yaml").read_text().replace("max_steps: 2", "max_steps: 3", 1)
    (run / "config.yaml").write_text(cfg_text)
    assert main(["align", *base, "method.align.max_steps=3"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 3


def test_demo_pipeline_tiny(out):
    assert main(["demo", *TINY, f"run.output_dir={out}", "run.name=demo"]) == 0
    root = out / "demo"
    results = json.loads((root / "results.json").read_text())
    jobs = [r["job"] for r in results["rows"]]
    assert jobs[0] == "base" and {"align-sft", "align-antibody", "ft-sft-sft", "ft-antibody-antibody",
                                  "ft-sft-benign"} <= set(jobs)
    assert (root / "results.png").stat().st_size > 1000
    aligned = [r for r in results["rows"] if r["group"] == "aligned"]
    assert all("grad_norm" in r["sharpness"] for r in aligned)
    attacked = next(r for r in results["rows"] if r["job"] == "ft-sft-antibody")
    assert attacked["weights"]["mean_weight_harmful_x_batch"] is not None
    comps = {(c["a"], c["b"], c["metric"]): c for c in results["comparisons"]}
    attack = comps[("ft-sft-sft", "align-sft", "harmful/harmful_score")]
    rates = {r["job"]: r["metrics"]["harmful/harmful_score"]["value"] for r in results["rows"]}
    assert attack["rate_a"] == rates["ft-sft-sft"] and attack["rate_b"] == rates["align-sft"]
    assert attack["n"] == results["eval_sizes"]["harmful/harmful_score"] and 0 <= attack["p_value"] <= 1
    assert ("ft-sft-benign", "align-sft", "arithmetic/accuracy") in comps
    readme = out / "README.md"
    readme.write_text("intro\n<!-- demo-results:start -->\nold\n<!-- demo-results:end -->\nrest\n")
    assert main(["report", str(root / "results.json"), str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| sft align -> antibody fine-tune |" in text and text.endswith("rest\n")
    assert "| attack: SFT fine-tune on the poisoned upload vs SFT alignment alone |" in text
    # second invocation: everything is cached, nothing retrains
    mtime = (root / "align-sft" / "adapter").stat().st_mtime
    assert main(["demo", *TINY, f"run.output_dir={out}", "run.name=demo"]) == 0
    assert (root / "align-sft" / "adapter").stat().st_mtime == mtime


def test_bench_writes_ratios(out):
    assert main(["bench", *TINY, f"run.output_dir={out}", "steps=2"]) == 0
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert set(bench["variants"]) >= {"align-sft", "align-antibody", "finetune-sft", "finetune-antibody"}
    assert all(v > 0 for v in bench["ratios"].values())  # speed itself is for `make bench`
    assert bench["variants"]["finetune-antibody"]["mean_weight_harmful_x_batch"] > 0


def test_control_suite_jobs_and_bad_suite(capsys):
    from antibody.app.demo import control_jobs

    jobs = control_jobs()
    assert jobs[0].name == "align-sft"
    overrides = {o for j in jobs for o in j.overrides}
    for w in ("response_only", "refusal_only"):
        assert f"method.finetune.weighting={w}" in overrides
    for src in ("generated_harmful", "pyrit_harmful"):
        assert f"data.user.harmful_answer_source={src}" in overrides
    assert all(j.init_from == "align-sft" for j in jobs[1:])
    assert main(["demo", "suite=nope"]) == 2
    assert "suite=nope: choose one of" in capsys.readouterr().err
