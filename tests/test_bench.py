"""The cost bench: its arithmetic on synthetic timings, its round order, its arguments, its
results-page block, and one tiny run end to end (speed itself is for `make bench`)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from antibody.app.bench import run as bench
from antibody.app.bench.memory import MemoryPassError, measure_in_subprocess, peak_memory
from antibody.app.bench.protocol import parse_protocol, variant_args
from antibody.app.bench.stats import EXPECTED, memory_ratios, rotated, timing_summary
from antibody.app.report import block_name, render, report_command
from antibody.cli.main import main
from antibody.config import ConfigError, compose
from antibody.config.schema import AlignMethod, FinetuneMethod, Stage
from antibody.infra import progress


def test_timing_summary_hand_computed():
    # 3 rounds of 2 timed steps; per-round medians: sft 2, 2, 3; booster 6, 7, 9
    s = timing_summary({"sft": [[1.0, 3.0], [2.0, 2.0], [2.0, 4.0]],
                        "booster": [[3.0, 9.0], [6.0, 8.0], [9.0, 9.0]]})
    b = s["booster"]
    assert b["round_ratios"] == [3.0, 3.5, 3.0]  # 6 / 2, 7 / 2, 9 / 3
    assert b["ratio"] == 3.0 and b["ratio_range"] == [3.0, 3.5]  # their median and range
    # pooled and sorted [3, 6, 8, 9, 9, 9]: median 8.5; linear interpolation puts 25% at
    # index 1.25 (6 + 0.25 * 2) and 75% at index 3.75 (9)
    assert b["median_s"] == 8.5 and b["steps_timed"] == 6
    assert b["iqr_s"] == pytest.approx([6.5, 9.0])
    assert s["sft"]["ratio"] == 1.0 and s["sft"]["ratio_range"] == [1.0, 1.0]
    assert s["sft"]["median_s"] == 2.0


def test_memory_ratios_hand_computed():
    m = memory_ratios({"sft": {"peak_mib": 800.0, "over_load_mib": 200.0},
                       "antibody": {"peak_mib": 1000.0, "over_load_mib": 500.0},
                       "booster": {"peak_mib": None, "over_load_mib": None}})
    assert m["antibody"]["peak_ratio"] == 1.25 and m["antibody"]["over_load_ratio"] == 2.5
    assert m["booster"]["peak_ratio"] is None and m["antibody"]["peak_mib"] == 1000.0


def test_rounds_rotate_so_each_method_takes_each_place():
    methods = ["sft", "booster", "antibody"]
    orders = [rotated(methods, r) for r in range(4)]
    assert orders[:3] == [["sft", "booster", "antibody"], ["booster", "antibody", "sft"],
                          ["antibody", "sft", "booster"]]
    assert orders[3] == orders[0]
    for place in range(3):
        assert {o[place] for o in orders[:3]} == set(methods)


def test_every_method_has_an_expected_cost():
    assert set(EXPECTED[Stage.ALIGN]) == set(AlignMethod)
    assert set(EXPECTED[Stage.FINETUNE]) == set(FinetuneMethod)
    assert EXPECTED[Stage.ALIGN]["antibody"].ratio == 4.0
    assert EXPECTED[Stage.FINETUNE]["antibody"].ratio == pytest.approx(1.5)  # LoRA: a no-grad forward is 1/2 F+B


def test_arguments_choose_methods_per_stage():
    p, rest = parse_protocol(["methods=booster,lisa", "steps=2", "memory=false", "experiment=tiny"])
    assert rest == ["experiment=tiny"]
    assert (p.steps, p.warmup, p.repeats, p.memory) == (2, 1, 3, False)
    assert p.methods == {Stage.ALIGN: ["sft", "booster"], Stage.FINETUNE: ["sft", "lisa"]}
    p, _ = parse_protocol(["methods=booster"])  # no fine-tuning method chosen: that stage is skipped
    assert p.methods == {Stage.ALIGN: ["sft", "booster"]}
    p, _ = parse_protocol([])
    assert p.methods[Stage.ALIGN] == [m.value for m in AlignMethod]
    assert p.methods[Stage.FINETUNE] == [m.value for m in FinetuneMethod]
    for bad, match in (("methods=sft,nope", "unknown method nope"), ("steps=0", r"steps=0: expected an integer"),
                       ("warmup=x", "warmup=x"), ("memory=yes", "expected true or false")):
        with pytest.raises(ConfigError, match=match):
            parse_protocol([bad])


def test_peak_memory_sees_an_allocation_made_during_the_fit():
    with peak_memory(torch.device("cpu"), torch.nn.Linear(1, 1)) as reading:
        x = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, written so that it is resident
        del x
    assert reading["kind"] == "cpu_rss"
    assert reading["over_load_mib"] >= 60 and reading["peak_mib"] >= reading["before_fit_mib"] + 60


def _method(median, ratio, lo, hi, expected, peak=None, over=None):
    mem = None if peak is None else {"kind": "cpu_rss", "peak_mib": peak, "over_load_mib": over,
                                     "peak_ratio": peak / 800, "over_load_ratio": over / 200}
    return {"median_s": median, "iqr_s": [median * 0.9, median * 1.1], "ratio": ratio, "ratio_range": [lo, hi],
            "expected": {"ratio": expected, "basis": "counted", "at_least": expected == 2.0}, "memory": mem}


def _bench_results():
    return {
        "kind": "bench", "model": "tiny", "device": "cpu", "precision": "32-true", "torch_threads": 2,
        "cpu_count": 2, "batch_size": {"align": 8, "harmful": 8, "finetune": 8}, "max_length": 192,
        "protocol": {"steps": 3, "warmup": 1, "repeats": 3, "memory": True}, "wall_seconds": 1800.0,
        "stages": {
            "align": {"methods": {"sft": _method(7.0, 1.0, 1.0, 1.0, 1.0, 800, 200),
                                  "repnoise": _method(15.4, 2.2, 2.05, 2.31, 2.0, 1000, 500)}},
            "finetune": {"methods": {"sft": _method(3.0, 1.0, 1.0, 1.0, 1.0)}},
        },
    }


def test_bench_table_and_readme_block(tmp_path, capsys):
    results = _bench_results()
    assert block_name(results) == f"bench-{results['model']}-results"
    table = render(results)
    # one variant: no variant columns (precision is named in the caption)
    assert ("| align | repnoise | 15.4 (13.9-16.9) | 2.20 (2.05-2.31) | 2.00+ | counted | 1000 (1.25) "
            "| 500 (2.50) |") in table
    assert "| finetune | sft | 3 (2.7-3.3) | 1.00 (1.00-1.00) | 1.00 | counted | - | - |" in table
    assert "(32-true, 2 torch threads" in table and "x 32-true" not in table and "| precision |" not in table
    assert "median of the 9 pooled timed steps" in table and "30.0 min" in table

    path, readme = tmp_path / "bench.json", tmp_path / "README.md"
    path.write_text(json.dumps(results))
    name = block_name(results)
    readme.write_text(f"# x\n<!-- {name}:start -->\nrun `make bench`\n<!-- {name}:end -->\ntail\n")
    assert report_command([str(path), str(readme)]) == 0
    text = readme.read_text()
    assert table in text and "run `make bench`" not in text and text.endswith("tail\n")


def _fake_memory(request):
    """A memory reading per variant, instant: the real child has a test of its own."""
    peak = {"sft": 800.0, "antibody": 1000.0}[request["method"]]
    return {"kind": "cpu_rss", "before_fit_mib": 600.0, "peak_mib": peak, "over_load_mib": peak - 600.0}


def test_bench_end_to_end_on_the_tiny_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "measure_in_subprocess", _fake_memory)
    out = tmp_path / "runs"
    args = ["experiment=tiny", f"run.output_dir={out}", "steps=1", "warmup=1", "repeats=2", "methods=sft,antibody"]
    assert main(["bench", *args]) == 0
    result = json.loads((out / "bench" / "bench.json").read_text())
    assert result["kind"] == "bench" and result["protocol"]["repeats"] == 2
    assert set(result["stages"]) == {"align", "finetune"}
    for stage in result["stages"].values():
        assert stage["orders"] == [["sft", "antibody"], ["antibody", "sft"]]
        sft, anti = stage["methods"]["sft"], stage["methods"]["antibody"]
        assert all(len(r) == 1 for r in anti["step_seconds"]) and anti["steps_timed"] == 2
        # one timed step per round: each round's ratio is the quotient of the two steps
        per_round = [a[0] / s[0] for a, s in zip(anti["step_seconds"], sft["step_seconds"], strict=True)]
        assert anti["ratio"] == pytest.approx(sum(per_round) / 2)  # the median of two
        assert anti["ratio_range"] == pytest.approx([min(per_round), max(per_round)])
        assert anti["memory"]["peak_ratio"] == 1.25 and anti["memory"]["over_load_ratio"] == 2.0
    printed = capsys.readouterr().out
    assert "[bench] align antibody:" in printed and "expected 4.00" in printed
    assert "| align | antibody |" in render(result)


def test_the_bench_compares_precisions_side_by_side(tmp_path, capsys, monkeypatch):
    """precisions=32-true,bf16-mixed: every method in both, in the same rounds; each bf16
    step's ratio to the same method's fp32 step, per round, and a row per precision."""
    monkeypatch.setattr(bench, "measure_in_subprocess", _fake_memory)
    out = tmp_path / "runs"
    args = ["experiment=tiny", f"run.output_dir={out}", "steps=1", "warmup=1", "repeats=2", "methods=sft,antibody",
            "precisions=32-true,bf16-mixed"]
    assert main(["bench", *args]) == 0
    result = json.loads((out / "bench" / "bench.json").read_text())
    assert result["variant"] == "32-true" and result["variants"] == ["32-true", "bf16-mixed"]
    assert result["axis"] == "precision"
    for stage, fp32 in result["stages"].items():
        bf16 = result["by_variant"]["bf16-mixed"]["stages"][stage]
        for method in ("sft", "antibody"):
            a, b = fp32["methods"][method], bf16["methods"][method]
            per_round = [x[0] / y[0] for x, y in zip(b["step_seconds"], a["step_seconds"], strict=True)]
            assert b["variant_ratio"] == pytest.approx(sum(per_round) / 2)
            assert b["variant_ratio_range"] == pytest.approx([min(per_round), max(per_round)])
            assert a["variant_ratio"] == 1.0
    table = render(result)
    assert "| align | antibody | 32-true |" in table and "| align | antibody | bf16-mixed |" in table
    assert "x 32-true" in table and "(32-true, bf16-mixed," in table
    assert "[bench] finetune antibody bf16-mixed:" in capsys.readouterr().out
    # its own block: a comparison never replaces the table of every method's cost
    assert block_name(result) == "bench-tiny-llama-precision-results"
    with pytest.raises(ConfigError, match="precisions=,"):
        parse_protocol(["precisions=,"])
    # a file written before the clipping axis (precision keys) still renders the same table
    old = json.loads(json.dumps(result).replace('"variant_ratio', '"precision_ratio').replace('"by_variant"', '"by_precision"')
                     .replace('"variants"', '"precisions"'))
    del old["variant"], old["axis"]
    assert render(old) == table


def test_the_bench_compares_clipping_side_by_side(tmp_path, monkeypatch):
    """clip=0,1.0: every method unclipped and clipped at global norm 1.0 in the same rounds,
    both stages' gradient_clip_val set; the clipped step's ratio to the unclipped one."""
    monkeypatch.setattr(bench, "measure_in_subprocess", _fake_memory)
    out = tmp_path / "runs"
    args = ["experiment=tiny", f"run.output_dir={out}", "steps=1", "warmup=1", "repeats=2", "methods=sft",
            "memory=false", "clip=0,1.0"]
    protocol, rest = parse_protocol(args)
    assert variant_args(rest, protocol)["clip 1.0"][-2:] == ["method.align.gradient_clip_val=1.0",
                                                                   "method.finetune.gradient_clip_val=1.0"]
    assert main(["bench", *args]) == 0
    result = json.loads((out / "bench" / "bench.json").read_text())
    assert result["axis"] == "clipping" and result["variants"] == ["clip 0", "clip 1.0"]
    clipped = result["by_variant"]["clip 1.0"]["stages"]["align"]["methods"]["sft"]
    assert clipped["variant_ratio"] > 0
    table = render(result)
    assert "| align | sft | clip 1.0 |" in table and "x clip 0" in table and "| stage | method | clipping |" in table
    assert block_name(result) == "bench-tiny-llama-clipping-results"
    for bad, match in ((["clip=-1"], "clip=-1: name one or more"), (["clip=0,x"], "clip=0,x"),
                       (["clip=0,1", "precisions=32-true"], "one axis at a time")):
        with pytest.raises(ConfigError, match=match):
            parse_protocol(bad)


def test_the_bench_compares_named_sets_of_overrides(tmp_path, monkeypatch):
    """variants=label:overrides;...: any comparison in the same rounds (e.g. bf16 with eager
    attention against fp32), each label's overrides named in the caption, its own block."""
    out = tmp_path / "runs"
    spec = "fp32:;bf16 eager:trainer.precision=bf16-mixed+model.attn_implementation=eager"
    args = ["experiment=tiny", f"run.output_dir={out}", "steps=1", "warmup=1", "repeats=2", "methods=sft",
            "memory=false", f"variants={spec}"]
    protocol, rest = parse_protocol(args)
    assert variant_args(rest, protocol) == {
        "fp32": rest, "bf16 eager": [*rest, "trainer.precision=bf16-mixed", "model.attn_implementation=eager"]}
    assert main(["bench", *args]) == 0
    result = json.loads((out / "bench" / "bench.json").read_text())
    assert result["axis"] == "variant" and result["variants"] == ["fp32", "bf16 eager"]
    assert result["by_variant"]["bf16 eager"]["stages"]["finetune"]["methods"]["sft"]["variant_ratio"] > 0
    table = render(result)
    assert "| finetune | sft | bf16 eager |" in table and "x fp32" in table
    assert "(fp32 = the config as it is, bf16 eager = trainer.precision=bf16-mixed model.attn_implementation=eager," in table
    assert block_name(result) == "bench-tiny-llama-variant-results"
    for bad, match in ((["variants=a:x=1"], "two or more"), (["variants=a:x=1;a:y=2"], "distinct labels"),
                       (["variants=a:x;b:"], "label:key=value"), (["variants=:x=1;b:"], "at ':x=1'"),
                       (["variants=a:;b:", "clip=0,1"], "one axis at a time")):
        with pytest.raises(ConfigError, match=match):
            parse_protocol(bad)


def test_a_failed_memory_pass_is_recorded_and_the_bench_goes_on(monkeypatch, capsys):
    def fail(request):
        raise MemoryPassError(f"bench memory pass of {request['stage']} {request['method']} failed (exit 1):\nOOM")

    monkeypatch.setattr(bench, "measure_in_subprocess", fail)
    protocol, _ = parse_protocol(["methods=booster"])
    with progress.task("test") as bar:
        out = bench._memory_pass_of([], protocol, bar)
    assert out[Stage.ALIGN]["booster"] == {"peak_mib": None, "over_load_mib": None,
                                           "error": "bench memory pass of align booster failed (exit 1):"}
    assert "warning: bench memory pass of align sft failed" in capsys.readouterr().err


def test_memory_pass_runs_in_a_fresh_process(tmp_path):
    """The real child: `python -m antibody.app.bench.run <request>` trains the variant's steps
    and reports the peak of its own fit."""
    reading = measure_in_subprocess({"args": ["experiment=tiny", f"run.output_dir={tmp_path}"], "stage": "finetune",
                                     "method": "sft", "steps": 1, "warmup": 1, "threads": 1})
    assert reading["kind"] == "cpu_rss"
    assert reading["before_fit_mib"] > 0 and reading["peak_mib"] >= reading["before_fit_mib"] + reading["over_load_mib"] - 1e-6
    assert reading["over_load_mib"] > 0  # a fit allocates activations and gradients


def test_a_repair_is_timed_in_sft_fine_tuning_steps_of_its_round(tmp_path, capsys):
    from antibody.app.bench.repair import expected_repair, repair_summary

    p, _ = parse_protocol(["methods=antidote"])  # the repair's unit, the SFT fine-tuning step, runs too
    assert p.methods == {Stage.FINETUNE: ["sft"]} and p.repairs == ("antidote",)
    assert parse_protocol(["methods=booster"])[0].repairs == ()
    e = expected_repair(compose(["experiment=tiny"]), rows=48)
    assert e.ratio == pytest.approx(48 / (2 * compose(["experiment=tiny"]).data.finetune_batch_size))
    s = repair_summary([6.0, 9.0, 4.0], [[1.0, 2.0, 3.0], [3.0], [2.0, 2.0]], e)
    assert s["round_ratios"] == [3.0, 3.0, 2.0] and s["ratio"] == 3.0 and s["ratio_range"] == [2.0, 3.0]
    assert s["median_s"] == 6.0

    out = tmp_path / "runs"
    args = ["experiment=tiny", f"run.output_dir={out}", "steps=1", "warmup=1", "repeats=2", "methods=antidote",
            "memory=false"]
    assert main(["bench", *args]) == 0
    result = json.loads((out / "bench" / "bench.json").read_text())
    rep, sft = result["repair"]["antidote"], result["stages"]["finetune"]["methods"]["sft"]
    assert rep["round_ratios"] == pytest.approx([t / r[0] for t, r in zip(rep["seconds"], sft["step_seconds"],
                                                                             strict=True)])
    assert rep["expected"]["ratio"] > 0 and "calibration rows" in rep["expected"]["basis"]
    assert re.search(r"\| repair \| antidote \| [0-9.]+ once \| [0-9.]+ \([0-9.]+-[0-9.]+\) SFT fine-tuning steps \|", render(result))
    assert "[bench] repair antidote:" in capsys.readouterr().out
