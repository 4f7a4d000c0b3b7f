"""Every method of each stage trains end to end through the CLI on the tiny model, every
alignment method composes with every fine-tuning method, and every option file of
conf/method/ is a valid configuration."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from antibody.cli.main import main
from antibody.config import ConfigError, compose
from antibody.config.schema import AlignMethod, FinetuneMethod, Weighting, finetune_method
from antibody.methods.bds import BDSFinetuneModule
from antibody.methods.constrained import ConstrainedFinetuneModule
from antibody.methods.flat_align import FlatAlignModule
from antibody.methods.lisa import LisaFinetuneModule
from antibody.methods.registry import (
    ALIGN_MODULES,
    FINETUNE_MODULES,
    build_align_module,
    build_finetune_module,
)
from antibody.methods.repnoise import RepNoiseAlignModule
from antibody.methods.t_vaccine import TVaccineAlignModule
from antibody.methods.vaccine import VaccineAlignModule
from antibody.methods.weighted_finetune import WeightedFinetuneModule
from tests._synthetic import tiny_lora_model

TINY = ["experiment=tiny", "method.align.max_steps=2", "method.finetune.max_steps=2"]
METHOD_FILES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml"))
# the weighting a fine-tuning method runs with when nothing else is asked for
DEFAULT_WEIGHTING = {
    FinetuneMethod.SFT: Weighting.UNIFORM,
    FinetuneMethod.ANTIBODY: Weighting.LIKELIHOOD_RATIO,
    FinetuneMethod.LISA: Weighting.UNIFORM,
    FinetuneMethod.SAFEINSTR: Weighting.UNIFORM,
    FinetuneMethod.CONSTRAINED: Weighting.UNIFORM,
    FinetuneMethod.BDS: Weighting.UNIFORM,
}


def test_registries_cover_every_method():
    assert set(ALIGN_MODULES) == set(AlignMethod)
    assert set(FINETUNE_MODULES) == set(FinetuneMethod)


def test_every_method_has_an_option_file_and_each_file_composes():
    assert {m.value for m in AlignMethod} | {m.value for m in FinetuneMethod} <= set(METHOD_FILES)
    for name in METHOD_FILES:
        cfg = compose([f"method={name}"])
        assert cfg.method.name == name
    # the paper's combinations are configurations, not code
    for name in ("booster_lisa", "booster_antibody", "antibody_sft", "sft_antibody"):
        assert name in METHOD_FILES


# What each method must build, written out here rather than read from the registries (a
# test against ALIGN_MODULES would pass whatever they map to): the module class, and for
# the flat module whether the flatness passes run (SFT is that module with them off).
EXPECTED_ALIGN = {
    AlignMethod.SFT: (FlatAlignModule, False),
    AlignMethod.BOOSTER: (FlatAlignModule, True),
    AlignMethod.ANTIBODY: (FlatAlignModule, True),
    AlignMethod.VACCINE: (VaccineAlignModule, None),
    AlignMethod.REPNOISE: (RepNoiseAlignModule, None),
    AlignMethod.T_VACCINE: (TVaccineAlignModule, None),
}
# the fine-tuning module class, and whether a step scores the refusal view (only Antibody's
# likelihood-ratio weights need log p(y_r|x); SafeInstr changes the data, not the step)
EXPECTED_FINETUNE = {
    FinetuneMethod.SFT: (WeightedFinetuneModule, False),
    FinetuneMethod.ANTIBODY: (WeightedFinetuneModule, True),
    FinetuneMethod.LISA: (LisaFinetuneModule, False),
    FinetuneMethod.SAFEINSTR: (WeightedFinetuneModule, False),
    FinetuneMethod.CONSTRAINED: (ConstrainedFinetuneModule, None),  # weights tokens: no row weighting rule
    FinetuneMethod.BDS: (BDSFinetuneModule, None),  # learns its row weights: no weighting rule
}


@pytest.mark.parametrize(
    ("align", "finetune"), list(itertools.product(list(AlignMethod), list(FinetuneMethod)))
)
def test_any_alignment_composes_with_any_finetuning(tiny_cfg, align, finetune):
    cfg = compose([
        "experiment=tiny",
        f"method.align.method={align.value}",
        f"method.finetune.method={finetune.value}",
        f"method.finetune.weighting={DEFAULT_WEIGHTING[finetune].value}",
        # Booster's own settings (it warns when asked for others)
        *(["method.align.lambda_mode=constant", "method.align.lambda2=0.0"] if align is AlignMethod.BOOSTER else []),
    ])
    aligner, finetuner = build_align_module(tiny_lora_model(), cfg), build_finetune_module(tiny_lora_model(), cfg)
    # exact classes: LisaFinetuneModule is a WeightedFinetuneModule, so isinstance would
    # accept Lisa's module for plain SFT
    align_cls, flat = EXPECTED_ALIGN[align]
    assert type(aligner) is align_cls
    if align_cls is FlatAlignModule:  # the flat module runs the asked method, not another
        assert (aligner.settings.method, aligner.settings.flat) == (align, flat)
    finetune_cls, scores_refusal = EXPECTED_FINETUNE[finetune]
    assert type(finetuner) is finetune_cls
    if scores_refusal is not None:
        assert finetuner.rule.needs_refusal is scores_refusal


def test_a_method_name_never_hides_its_weighting():
    with pytest.raises(ConfigError, match="method.finetune.method=sft trains with uniform weights"):
        compose(["method.finetune.method=sft", "method.finetune.weighting=likelihood_ratio"])
    with pytest.raises(ConfigError, match="is plain SFT"):
        compose(["method.finetune.method=antibody", "method.finetune.weighting=uniform"])


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """One SFT-aligned tiny run every fine-tuning method starts from."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["align", *TINY, f"run.output_dir={out}", "run.name=al", "method=sft"]) == 0
    return out


@pytest.mark.parametrize("method", [m for m in AlignMethod if m is not AlignMethod.SFT])
def test_every_alignment_method_trains_through_the_cli(aligned, method):
    name = f"al-{method.value}"
    assert main(["align", *TINY, f"run.output_dir={aligned}", f"run.name={name}", f"method={method.value}"]) == 0
    m = json.loads((aligned / name / "metrics.json").read_text())
    assert m["steps"] == 2 and m["config"]["method"]["align"]["method"] == method.value
    assert "align/loss" in m["final"]


@pytest.mark.parametrize("method", list(FinetuneMethod))
def test_every_finetuning_method_trains_through_the_cli(aligned, method):
    name = f"ft-{method.value}"
    args = ["finetune", *TINY, f"run.output_dir={aligned}", f"run.name={name}", "run.init_from=al"]
    # tiny's 20-row upload at SafeInstr's 3% holds no demonstration: ask for two
    extra = ["method.finetune.safeinstr.share=0.1"] if method is FinetuneMethod.SAFEINSTR else []
    assert main([*args, f"method={method.value}", *extra]) == 0
    run = aligned / name
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 2
    assert finetune_method(compose([f"method={method.value}"]).method.finetune) is method
    # the released scripts' merge-then-new-adapter path (every method but Antibody's)
    merged = json.loads((run / "base_adapters.json").read_text())
    assert bool(merged) is m["config"]["method"]["finetune"]["merge_then_new_adapter"]
    rows = [json.loads(line) for line in (run / "weights.jsonl").read_text().splitlines()]
    assert rows, "the user rows trained on are recorded for every method"
    summary = json.loads((run / "data_summary.json").read_text())
    if method is FinetuneMethod.SAFEINSTR:  # trained on the upload plus the demonstrations
        assert summary["train_split"] == "user_safeinstr"
        assert summary["splits"]["user_safeinstr"]["rows"] == summary["splits"]["user"]["rows"] + 2
    else:
        assert summary["train_split"] == "user"


def test_baselines_suite_jobs_compose_and_differ_from_sft_only_in_the_method(tmp_path):
    from antibody.app.demo.run import demo_study
    from antibody.app.study.plan import plan

    study, root = demo_study(["suite=baselines", "experiment=tiny", f"run.output_dir={tmp_path}"])
    jobs = {j.name: j for c in plan(study, root) for j in (c.align, c.finetune) if j}
    cfgs = {name: compose(list(job.overrides)) for name, job in jobs.items()}
    # every fine-tuning job starts from an alignment job of the suite
    assert all(Path(cfgs[n].run.init_from) in {root / a for a in jobs} for n in jobs if n.startswith("ft-"))
    # the paper's alignment baselines (T-Vaccine came later: the defences study's, not this suite's)
    paper = set(AlignMethod) - {AlignMethod.ANTIBODY, AlignMethod.T_VACCINE}
    assert {cfgs[f"align-{m.value}"].method.align.method for m in paper} == paper
    ref = cfgs["ft-sft-sft"].method.finetune
    for name in ("ft-sft-lisa", "ft-sft-safeinstr", "ft-booster-sft", "ft-vaccine-sft", "ft-repnoise-sft"):
        ft = cfgs[name].method.finetune
        assert (ft.weighting, ft.merge_then_new_adapter, ft.lr, ft.max_steps) == (
            ref.weighting, ref.merge_then_new_adapter, ref.lr, ref.max_steps)
    # each baseline is compared with SFT -> SFT (load_study checks that comparisons name rows)
    for m in ("booster", "vaccine", "repnoise", "lisa", "safeinstr"):
        assert any(m in c.a and c.b == "sft align -> sft fine-tune" for c in study.comparisons), m


@pytest.mark.parametrize(
    ("method", "keys"),
    [(AlignMethod.SFT, ["align", "position"]), (AlignMethod.VACCINE, ["align", "position"]),
     (AlignMethod.BOOSTER, ["align", "harmful", "position"]), (AlignMethod.REPNOISE, ["align", "harmful", "position"])],
)
def test_alignment_items_hold_only_the_streams_a_method_declares(tmp_path, method, keys):
    from antibody.data.datamodule import SafetyDataModule
    from antibody.data.streams import take
    from antibody.models import load_tokenizer

    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}", f"method={method.value}"])
    dm = SafetyDataModule(cfg, load_tokenizer(cfg.model), "align", cache_dir=tmp_path / "cache")
    dm.setup()
    module = build_align_module(tiny_lora_model(), cfg)
    items = take(dm.train_stream(0, plan=getattr(module, "stream_plan", None)), 2)
    assert [sorted(i) for i in items] == [keys, keys]
