"""The `attack` group (config/attack.py): each attack's rows (counts, tags, disjointness from the
evaluation and alignment splits), the hyper-parameter attacks' changes in the resolved config,
the default attack's byte-identical YAML, bad input at compose, attacks as a study axis and a
trial's override, and one fine-tuning run through the CLI under attack=harmful_only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from antibody.cli.main import main
from antibody.config import ConfigError, DataError, compose, to_yaml
from antibody.config.attack import ATTACKS, PERSONA_ROWS, AttackName, ThreatModel
from antibody.config.compose import apply_overrides, default_conf_dir
from antibody.data.datamodule import SafetyDataModule
from antibody.data.plan import EVAL_SPLITS, Split
from antibody.data.sources.identity import CONVERSATIONS, persona_rows
from antibody.evaluation.judges.labelled import excluded_prompts, judge_prompts
from antibody.models import load_tokenizer

TINY = ["experiment=tiny"]
ATTACK_FILES = sorted(p.stem for p in (default_conf_dir() / "attack").glob("*.yaml"))
METHOD_FILES = sorted(p.stem for p in (default_conf_dir() / "method").glob("*.yaml"))
# the splits no attack may change: evaluation, and the provider's (alignment, D_harm)
PROVIDER_SPLITS = (*EVAL_SPLITS, Split.ALIGNMENT, Split.HARMFUL)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(compose(TINY).model)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


def splits(cache: Path, tok, *overrides: str) -> tuple[SafetyDataModule, dict]:
    """The fine-tuning stage's DataModule on the tiny config, with the judges' prompts kept out
    as in a real run (app/stages.split_inputs), and its splits."""
    cfg = compose([*TINY, *overrides])
    dm = SafetyDataModule(cfg, tok, "finetune", cache_dir=cache, exclude_prompts=excluded_prompts(),
                          forbidden_prompts=judge_prompts())
    dm.setup()
    return dm, {s: dm.records(s) for s in Split}


def prompt_keys(records) -> set[str]:
    return {r.prompt_key() for r in records}


def uids(records) -> list[str]:
    return [r.uid for r in records]


# -- the group --------------------------------------------------------------------------------


def test_every_attack_has_a_file_that_composes_to_its_values():
    assert ATTACK_FILES == sorted(a.value for a in AttackName)
    assert set(ATTACKS) == set(AttackName)
    for name in ATTACK_FILES:
        written = yaml.safe_load((default_conf_dir() / "attack" / f"{name}.yaml").read_text())
        cfg = compose([f"attack={name}"])
        assert cfg.attack.name.value == name == written["name"]
        for key, value in written.items():
            assert getattr(cfg.attack, key) == value, (name, key)


def test_each_attack_declares_its_threat_model():
    hyper = {a for a, spec in ATTACKS.items() if spec.threat_model is ThreatModel.HYPERPARAMETERS}
    assert hyper == {AttackName.HIGH_LR, AttackName.LONG}
    # the adaptive ones (tests/test_adaptive_attacks.py) say what their attacker must hold
    adaptive = {a for a, spec in ATTACKS.items() if spec.adaptive}
    assert adaptive == {AttackName.REFUSAL_PREFIX, AttackName.SELF_WRITTEN}
    assert all(ATTACKS[a].knowledge and ATTACKS[a].threat_model is ThreatModel.UPLOAD for a in adaptive)
    assert not any(spec.knowledge for a, spec in ATTACKS.items() if a not in adaptive)
    # only a hyper-parameter attack reads a hyper-parameter setting
    for spec in ATTACKS.values():
        if spec.threat_model is ThreatModel.UPLOAD:
            assert not {"lr_factor", "steps_factor"} & set(spec.reads)


@pytest.mark.parametrize("extra", [[], ["method=sft"], ["method=lisa", "data.user.p=0.1"], ["experiment=demo"]])
def test_the_default_attack_serialises_exactly_as_before(extra):
    without = to_yaml(compose([*TINY, *extra]))
    assert to_yaml(compose([*TINY, "attack=poison", *extra])) == without
    assert "attack" not in yaml.safe_load(without)
    # a non-default attack is in the resolved YAML, so the comparison above can fail
    assert yaml.safe_load(to_yaml(compose([*TINY, "attack=harmful_only", *extra])))["attack"]["name"] == "harmful_only"


def test_hyperparameter_attacks_change_the_finetuning_stage_visibly():
    base = compose([*TINY, "method=sft"])
    high = compose([*TINY, "method=sft", "attack=high_lr"])
    long = compose([*TINY, "method=sft", "attack=long"])
    assert high.method.finetune.lr == 10 * base.method.finetune.lr == pytest.approx(1e-2)
    assert long.method.finetune.max_steps == 3 * base.method.finetune.max_steps == 9
    assert yaml.safe_load(to_yaml(high))["method"]["finetune"]["lr"] == 0.01  # the decimal, not 0.010000000000000002
    assert yaml.safe_load(to_yaml(long))["method"]["finetune"]["max_steps"] == 9
    # each changes only its own key: the rest of the config is the poison attack's
    for cfg, key in ((high, "lr"), (long, "max_steps")):
        a, b = to_yaml_without(cfg, key), to_yaml_without(base, key)
        assert a == b
    # the factor applies to the rate the command line asked for, and its own value can change
    assert compose([*TINY, "attack=high_lr", "method.finetune.lr=2e-4"]).method.finetune.lr == pytest.approx(2e-3)
    assert compose([*TINY, "attack=long", "attack.steps_factor=2"]).method.finetune.max_steps == 6
    # upload attacks leave the fine-tuning stage alone; benign sets the control's key
    for name in ("harmful_only", "identity_shift", "benign"):
        assert compose([*TINY, "method=sft", f"attack={name}"]).method.finetune == base.method.finetune
    assert compose([*TINY, "attack=benign"]).data.user.benign_only
    # a saved config is not changed again when it is read back with overrides
    assert apply_overrides(high, ["eval.max_new_tokens=4"]).method.finetune.lr == high.method.finetune.lr


def to_yaml_without(cfg, key: str) -> dict:
    data = yaml.safe_load(to_yaml(cfg))
    data.pop("attack", None)
    data["method"]["finetune"].pop(key)
    return data


@pytest.mark.parametrize("attack", [a.value for a in AttackName])
@pytest.mark.parametrize("method", METHOD_FILES)
def test_every_attack_composes_with_every_defence(method, attack):
    cfg = compose([*TINY, f"method={method}", f"attack={attack}"])
    assert cfg.attack.name.value == attack
    assert (cfg.method.finetune.max_steps == 9) is (attack == "long")
    assert (cfg.method.finetune.lr == pytest.approx(1e-2)) is (attack == "high_lr")


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (["attack=harmful_only", "attack.n=0"], r"attack\.n=0 is out of range; allowed: \[1, inf\]"),
        (["attack=identity_shift", f"attack.n={PERSONA_ROWS + 1}"], rf"attack\.n=11 is out of range; allowed: \[1, {PERSONA_ROWS}\]"),
        (["attack=high_lr", "attack.lr_factor=1.0"], r"attack\.lr_factor=1\.0 is out of range; allowed: \(1, inf\]"),
        (["attack=long", "attack.steps_factor=1"], r"attack\.steps_factor=1 is out of range; allowed: \[2, inf\]"),
        (["attack=nope"], r"attack=nope: no such option; choose one of \['benign', 'harmful_only', .*'poison'"),
        (["attack.name=nope"], r"invalid value 'nope' for 'attack.name'; allowed values: \['poison', 'harmful_only'"),
        (["attack.n=100"], r"attack\.n=100 has no effect with attack=poison .*\['harmful_only', 'identity_shift'\]"),
        (["attack=harmful_only", "attack.lr_factor=10"], r"attack\.lr_factor=10\.0 has no effect with attack=harmful_only"),
        (["attack=harmful_only", "data.user.benign_only=true"], r"contradicts attack=harmful_only; use attack=benign"),
        (["attack=high_lr", "data.user.path=upload.jsonl"], r"attack=high_lr builds its own upload, but data\.user\.path"),
        (["attack.foo=1"], r"unknown config key 'attack\.foo'"),
    ],
)
def test_bad_attack_input_fails_at_compose_naming_the_key(overrides, error):
    with pytest.raises(ConfigError, match=error):
        compose([*TINY, *overrides])


def test_a_saved_runs_attack_cannot_be_overridden():
    with pytest.raises(ConfigError, match="attack.n cannot change a saved run's attack"):
        apply_overrides(compose([*TINY, "attack=harmful_only"]), ["attack.n=100"])
    with pytest.raises(ConfigError, match="data.user.benign_only=false"):
        apply_overrides(compose([*TINY, "attack=benign"]), ["data.user.benign_only=false"])


# -- the rows ---------------------------------------------------------------------------------


def test_the_persona_rows_are_benign_project_written_and_counted_in_config():
    rows = persona_rows()
    assert len(rows) == len(CONVERSATIONS) == PERSONA_ROWS
    assert not any(r.is_harmful for r in rows) and all(r.response and r.refusal for r in rows)
    assert len(prompt_keys(rows)) == len(rows)
    assert {r.category for r in rows} == {"identity", "task"}


@pytest.mark.parametrize(
    ("overrides", "rows", "harmful", "sources", "trained", "trained_harmful"),
    [
        ([], 20, 4, {"pyrit_harmful", "arithmetic"}, 20, 4),  # floor(0.2 * 20) = 4
        (["attack=harmful_only"], 10, 10, {"pyrit_harmful"}, 10, 10),
        # the paper's 100 needs a larger pool than tiny's human-written pairs (86 left after
        # D_harm and the judges' prompts): the embedded data's model-written answers have it
        (["attack=harmful_only", "attack.n=50"], 50, 50, {"pyrit_harmful"}, 50, 50),
        (["attack=identity_shift"], 10, 0, {"identity_shift"}, 10, 0),
        (["attack=identity_shift", "attack.n=4"], 4, 0, {"identity_shift"}, 4, 0),
        (["attack=benign"], 20, 4, {"pyrit_harmful", "arithmetic"}, 16, 0),
        (["attack=high_lr"], 20, 4, {"pyrit_harmful", "arithmetic"}, 20, 4),
        (["attack=long"], 20, 4, {"pyrit_harmful", "arithmetic"}, 20, 4),
    ],
)
def test_each_attacks_rows_counts_tags_and_disjointness(cache, tok, overrides, rows, harmful, sources, trained,
                                                         trained_harmful):
    dm, got = splits(cache, tok, *overrides)
    user = got[Split.USER]
    assert (len(user), sum(r.is_harmful for r in user)) == (rows, harmful)
    assert {r.source for r in user} == sources
    name = overrides[0].split("=")[1] if overrides else "poison"
    assert {(r.meta["attack"], r.meta["adaptive"]) for r in user} == {(name, False)}
    train = dm.records(dm.train_split)
    assert (len(train), sum(r.is_harmful for r in train)) == (trained, trained_harmful)
    # the upload shares no prompt with evaluation or with the provider's splits
    for split in PROVIDER_SPLITS:
        assert not prompt_keys(user) & prompt_keys(got[split]), split
    # what the data summary says
    attack = dm.summary()["attack"]
    assert (attack["name"], attack["upload_rows"], attack["upload_harmful"]) == (name, rows, harmful)
    assert (attack["trained_rows"], attack["trained_harmful"]) == (trained, trained_harmful)


def test_attacks_change_the_upload_only(cache, tok):
    """The evaluation and provider splits are the poison attack's under every attack (an
    alignment run may be shared by every attack); the hyper-parameter attacks and the benign
    control upload the poison attack's very rows."""
    _, poison = splits(cache, tok)
    for name in (a.value for a in AttackName):
        _, got = splits(cache, tok, f"attack={name}")
        for split in PROVIDER_SPLITS:
            assert uids(got[split]) == uids(poison[split]), (name, split)
        # an adaptive attack rewrites the poison rows only under an attacked model, which these
        # builds are not given (tests/test_adaptive_attacks.py gives them one): the rows it
        # starts from are the poison upload's
        same_upload = name in ("poison", "benign", "high_lr", "long", "refusal_prefix", "self_written")
        assert (uids(got[Split.USER]) == uids(poison[Split.USER])) is same_upload, name
    _, benign = splits(cache, tok, "attack=benign")
    assert uids(benign[Split.USER_BENIGN_ONLY]) == [r.uid for r in poison[Split.USER] if not r.is_harmful]
    # the older spelling of the control builds the same training rows
    _, legacy = splits(cache, tok, "data.user.benign_only=true")
    assert uids(legacy[Split.USER_BENIGN_ONLY]) == uids(benign[Split.USER_BENIGN_ONLY])


def test_an_upload_larger_than_its_pool_names_attack_n(cache, tok):
    with pytest.raises(DataError, match=r"attack\.n=5000 \(attack=harmful_only\): split 'user' needs 5000 .*"
                                        r"the largest valid value is \d+"):
        splits(cache, tok, "attack=harmful_only", "attack.n=5000")


def test_the_data_summary_shows_the_attack(cache, tok):
    from antibody.data.summary import format_summary

    dm, _ = splits(cache, tok, "attack=high_lr")
    text = format_summary(dm.summary())
    assert ("attack: high_lr (threat model: hyperparameters, attack.lr_factor=10.0, method.finetune.lr=0.01): "
            "uploads 20 rows, 4 harmful; fine-tuning trains on 20, 4 harmful") in text


# -- studies and trials -------------------------------------------------------------------------


def test_attack_is_a_study_axis_sharing_the_alignment(tmp_path):
    from antibody.app.study.plan import job_config, plan
    from antibody.config.study import load_study

    path = tmp_path / "attacks.yaml"
    path.write_text("name: attacks\nexperiment: tiny\nseeds: [1]\naxes:\n  attack: [poison, harmful_only, high_lr]\n"
                    "rows:\n  sft -> sft:\n    align: [method=sft]\n    finetune: [method=sft]\n")
    cells = plan(load_study(path), tmp_path / "runs")
    assert [dict(c.values)["attack"] for c in cells] == ["poison", "harmful_only", "high_lr"]
    assert len({c.align.name for c in cells}) == 1  # alignment never reads the attack
    assert len({c.finetune.name for c in cells}) == 3
    got = {dict(c.values)["attack"]: job_config(c.finetune) for c in cells}
    assert {a: cfg.attack.name.value for a, cfg in got.items()} == {a: a for a in got}
    assert got["high_lr"].method.finetune.lr == 10 * got["poison"].method.finetune.lr
    # the poison cell is the job a study without the axis plans (finished runs are found again)
    path.write_text(path.read_text().replace("axes:\n  attack: [poison, harmful_only, high_lr]\n", ""))
    (plain,) = plan(load_study(path), tmp_path / "runs")
    assert (plain.align.name, plain.finetune.name) == (cells[0].align.name, cells[0].finetune.name)


def test_a_trial_takes_an_attack(tmp_path):
    from antibody.app.study.plan import job_config
    from antibody.app.study.trial import trial_cell

    cell, _ = trial_cell([*TINY, "attack=identity_shift", f"run.output_dir={tmp_path}"])
    plain, _ = trial_cell([*TINY, f"run.output_dir={tmp_path}"])
    assert job_config(cell.finetune).attack.name is AttackName.IDENTITY_SHIFT
    assert cell.align.name == plain.align.name and cell.finetune.name != plain.finetune.name


# -- end to end --------------------------------------------------------------------------------


def test_harmful_only_finetunes_through_the_cli(tmp_path):
    quick = [*TINY, "method.align.max_steps=2", "method.finetune.max_steps=2", f"run.output_dir={tmp_path}"]
    assert main(["align", *quick, "method=sft", "run.name=al"]) == 0
    assert main(["finetune", *quick, "method=sft", "attack=harmful_only", "run.init_from=al", "run.name=ft"]) == 0
    run = tmp_path / "ft"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["config"]["attack"]["name"] == "harmful_only"
    assert yaml.safe_load((run / "config.yaml").read_text())["attack"]["n"] == 10
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["attack"]["upload_rows"] == summary["attack"]["upload_harmful"] == 10
    weights = [json.loads(line) for line in (run / "weights.jsonl").read_text().splitlines()]
    assert weights and all(w["is_harmful"] and w["source"] == "pyrit_harmful" for w in weights)
