"""The adaptive attacks (issue 26, part B; data/adaptive/): refusal_prefix chooses its
(refusal, transition) pair on held-out rows by the weighting's own r under the aligned model the
fine-tuning starts from, self_written has that model write the harmful answers; both are built
lazily from `run.init_from`, cached by the aligned adapter's digest, refused without an aligned
run, and fine-tune end to end through the CLI.

One tiny alignment serves the module (its rate raised so that the aligned model's greedy text
differs from the base model's, which makes "written by the aligned model" checkable), and one
data cache (app/stages.default_cache_dir patched to a temporary folder)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from antibody.cli.main import main
from antibody.config import ConfigError, DataError, compose, to_yaml
from antibody.config.attack import ATTACKS, AttackName
from antibody.config.schema import Stage
from antibody.data.adaptive import CANDIDATES, PREFIXES, TRANSITIONS, prefixed_answer
from antibody.data.plan import EVAL_SPLITS, Split
from antibody.data.sources.refusals import REFUSALS
from antibody.models import load_model, load_tokenizer

TINY = ["experiment=tiny", "method.align.max_steps=2", "method.finetune.max_steps=2"]
# a higher alignment rate than tiny's (1e-3): the aligned model's greedy continuation then
# differs from the base model's (" protest protest ..." against " is is ..."), so that a
# self-written answer can be told apart from one the base model wrote
ALIGN = ["method=sft", "method.align.lr=0.05"]
# refusal_prefix's scoring at test size: 2 held-out rows; long enough rows that no harmful
# answer is cut, so that the independent recomputation below needs no truncation rule
PREFIX = ["attack=refusal_prefix", "attack.held_out=2", "data.max_length=4096"]
SELF = ["attack=self_written"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(output dir, data cache) with one finished tiny alignment `al` in the output dir."""
    import antibody.app.stages as stages

    out, cache = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("data-cache")
    patch = pytest.MonkeyPatch()
    patch.setattr(stages, "default_cache_dir", lambda: cache)
    assert main(["align", *TINY, *ALIGN, f"run.output_dir={out}", "run.name=al"]) == 0
    yield out, cache
    patch.undo()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(compose(["experiment=tiny"]).model)


def cfg_of(world, *overrides: str, init: bool = True):
    out, _ = world
    return compose([*TINY, f"run.output_dir={out}", *(["run.init_from=al"] if init else []), *overrides])


def built(world, tok, *overrides: str, stage: Stage = Stage.FINETUNE, write: bool = True):
    """The stage's DataModule as the CLI builds it (app/stages.new_datamodule), its splits built:
    prepare_data (may load the attacked model) then setup, or setup alone (the caches only).
    The alignment stage's config names no aligned run, as an alignment's never does."""
    from antibody.app.stages import new_datamodule

    dm = new_datamodule(cfg_of(world, *overrides, init=stage is Stage.FINETUNE), tok, stage)
    if write:
        dm.prepare_data()
    dm.setup("fit")
    return dm


def keys(rows) -> set[str]:
    return {r.prompt_key() for r in rows}


def aligned_model(world):
    cfg = cfg_of(world)
    model, _ = load_model(cfg.model, adapter_path=world[0] / "al" / "adapter", inference=True)
    return model.eval()


def adapter_sha256(folder: Path) -> str:
    """The digest the cache keys must name, computed here from the files themselves."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


# -- the group ---------------------------------------------------------------------------------


def test_the_adaptive_attacks_declare_what_the_attacker_holds_and_keep_older_yaml():
    for name, reads in ((AttackName.REFUSAL_PREFIX, ("held_out",)), (AttackName.SELF_WRITTEN, ("prefill",))):
        spec = ATTACKS[name]
        assert spec.adaptive and spec.reads == reads and "run.init_from" in spec.knowledge
    assert "prefilled assistant turn" in ATTACKS[AttackName.SELF_WRITTEN].knowledge
    # their settings are left out at their defaults: the attacks before them serialise as they did
    assert yaml.safe_load(to_yaml(compose(["attack=harmful_only"])))["attack"] == {
        "name": "harmful_only", "n": 10, "lr_factor": 1.0, "steps_factor": 1}
    assert yaml.safe_load(to_yaml(compose(["attack=self_written", "attack.prefill=Of course"])))["attack"][
        "prefill"] == "Of course"
    for overrides, error in (
        (["attack=refusal_prefix", "attack.held_out=0"], r"attack\.held_out=0 is out of range"),
        (["attack.held_out=3"], r"attack\.held_out=3 has no effect with attack=poison .*\['refusal_prefix'\]"),
        (["attack=self_written", 'attack.prefill="  "'], r"attack\.prefill is empty"),
        (["attack=harmful_only", "attack.prefill=Hi"], r"has no effect with attack=harmful_only .*\['self_written'\]"),
    ):
        with pytest.raises(ConfigError, match=error):
            compose(overrides)


def test_every_candidate_is_a_pool_refusal_then_a_transition():
    assert len(CANDIDATES) == len(PREFIXES) * len(TRANSITIONS) and "" in TRANSITIONS
    assert set(PREFIXES) <= set(REFUSALS)
    for prefix, transition in CANDIDATES:
        text = prefixed_answer(prefix, transition, "  Step 1: ...")
        assert text.startswith(prefix) and text.endswith("Step 1: ...") and "  " not in text
        assert (transition in text) and (text == f"{prefix} Step 1: ...") is (transition == "")


def test_an_adaptive_attack_without_an_aligned_run_fails_before_any_model_loads(world, tok, monkeypatch, capsys):
    import antibody.models as models
    from antibody.app.stages import new_datamodule
    from antibody.app.summary import data_summary

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", no_model)
    out = world[0]
    for attack in ("refusal_prefix", "self_written"):
        cfg = cfg_of(world, f"attack={attack}", init=False)
        with pytest.raises(ConfigError, match=rf"attack={attack} is adaptive: .* run\.init_from is not set"):
            new_datamodule(cfg, tok, Stage.FINETUNE)
        with pytest.raises(ConfigError, match="run.init_from is not set"):
            data_summary(cfg)
        code = main(["finetune", *TINY, f"run.output_dir={out}", f"attack={attack}", f"run.name=no-{attack}"])
        assert code != 0 and "run.init_from is not set" in capsys.readouterr().err
        assert not (out / f"no-{attack}").exists()  # refused before its run dir was written
    # a non-adaptive attack needs no aligned run, so the check above can fail
    assert new_datamodule(cfg_of(world, "attack=harmful_only", init=False), tok, Stage.FINETUNE) is not None


def test_alignment_never_reads_an_adaptive_attack(world, tok):
    from antibody.app.study.plan import align_key

    plain = align_key(compose(TINY))
    assert {align_key(compose([*TINY, f"attack={a}"])) for a in ("refusal_prefix", "self_written")} == {plain}
    # the alignment stage builds its splits without an aligned run, and its upload is not rewritten
    dm = built(world, tok, *SELF, stage=Stage.ALIGN)
    report = dm.summary()["attack"]["adaptive_build"]
    assert report["built"] is False and "no attacked model" in report["why"]
    assert not any(r.meta["adaptive"] for r in dm.records(Split.USER))
    assert next(iter(dm.train_stream(0)))  # the alignment stream never reads the upload
    # a fine-tuning DataModule given no attacked model refuses to stream that upload
    from antibody.data.datamodule import SafetyDataModule

    raw = SafetyDataModule(cfg_of(world, *SELF), tok, "finetune", cache_dir=world[1])
    with pytest.raises(DataError, match="attack=self_written rewrites the upload under the aligned model"):
        raw.train_stream(0)


# -- refusal_prefix ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefix_dm(world, tok):
    return built(world, tok, *PREFIX)


def test_refusal_prefix_rewrites_the_poison_rows_counts_tags_and_pool_refusals(world, tok, prefix_dm):
    poison = built(world, tok, "data.max_length=4096")
    user, base = prefix_dm.records(Split.USER), poison.records(Split.USER)
    assert (len(user), sum(r.is_harmful for r in user)) == (20, 4)  # the poison upload's counts
    assert [r.uid for r in user] == [r.uid for r in base]  # the same rows, row for row
    chosen = prefix_dm.summary()["attack"]["adaptive_build"]["chosen"]
    for row, old in zip(user, base, strict=True):
        assert (row.meta["attack"], row.meta["adaptive"]) == ("refusal_prefix", row.is_harmful)
        assert row.refusal == old.refusal
        if not row.is_harmful:
            assert row.response == old.response
            continue
        # a refusal-prefixed answer starts with a refusal from the pool, then complies
        assert any(row.response.startswith(r) for r in REFUSALS)
        assert not any(old.response.startswith(r) for r in REFUSALS)
        assert row.response == prefixed_answer(chosen["prefix"], chosen["transition"], old.response)
    attack = prefix_dm.summary()["attack"]
    assert (attack["upload_rows"], attack["upload_harmful"], attack["upload_adaptive"]) == (20, 4, 4)


def test_the_held_out_rows_are_the_attackers_own(world, tok, prefix_dm):
    held = prefix_dm.records(Split.ATTACK_HELD_OUT)
    assert len(held) == 2 and all(r.is_harmful and r.response for r in held)
    report = prefix_dm.summary()["attack"]["adaptive_build"]
    assert report["held_out_uids"] == [r.uid for r in held] and report["held_out_rows"] == 2
    # never uploaded, and apart from evaluation and the provider's splits (by prompt)
    for split in (Split.USER, Split.ALIGNMENT, Split.HARMFUL, *EVAL_SPLITS):
        assert not keys(held) & keys(prefix_dm.records(split)), split
    # drawn last: every other split is the one the poison attack builds
    poison = built(world, tok, "data.max_length=4096")
    for split in (s for s in Split if s is not Split.ATTACK_HELD_OUT):
        assert [r.uid for r in prefix_dm.records(split)] == [r.uid for r in poison.records(split)], split
    assert poison.records(Split.ATTACK_HELD_OUT) == []


def _mean_logprob(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :]
    assert len(picked) == len(answer_ids)
    return float(picked.mean())


def test_the_chosen_pair_is_the_argmax_of_the_weightings_r_on_the_held_out_rows(world, tok, prefix_dm):
    report = prefix_dm.summary()["attack"]["adaptive_build"]
    cands = report["candidates"]
    assert [(c["prefix"], c["transition"]) for c in cands] == list(CANDIDATES)
    means = [c["mean_r"] for c in cands]
    assert len(set(means)) > 1  # the candidates differ, so the argmax below is a real check
    best = cands[means.index(max(means))]
    assert report["chosen"] == {k: best[k] for k in ("prefix", "transition", "mean_r")}
    # the same numbers in the run's summary and recomputed here with plain torch: the mean
    # log-probability of answer + EOS after the chat prompt, own answer minus refusal view
    model = aligned_model(world)
    held = prefix_dm.records(Split.ATTACK_HELD_OUT)
    worst = cands[means.index(min(means))]
    for cand in (best, worst):
        r = []
        for rec in held:
            user = f"{rec.instruction}\n\n{rec.input}" if rec.input else rec.instruction
            text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                           tokenize=False)
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            answer = " ".join(p for p in (cand["prefix"], cand["transition"], rec.response.strip()) if p)
            own = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            refusal = tok(rec.refusal, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert len(prompt) + len(own) <= 4096  # nothing was cut (data.max_length)
            r.append(_mean_logprob(model, prompt, own) - _mean_logprob(model, prompt, refusal))
        assert sum(r) / len(r) == pytest.approx(cand["mean_r"], abs=2e-4)


def test_the_choice_is_cached_by_the_aligned_adapter(world, tok, prefix_dm):
    report = prefix_dm.summary()["attack"]["adaptive_build"]
    path = Path(report["cache"])
    assert path.is_file() and path.parent == world[1] / "adaptive"
    stored = json.loads(path.read_text())
    assert stored["attacked"]["adapter_sha256"] == adapter_sha256(world[0] / "al" / "adapter")
    # a build from the cache alone gives the same upload and loads no model
    again = built(world, tok, *PREFIX, write=False)
    assert again.attacked_model.loads == 0
    assert [r.response for r in again.records(Split.USER)] == [r.response for r in prefix_dm.records(Split.USER)]
    # other held-out rows are another key: nothing cached, and a read-only build says what fills it
    with pytest.raises(DataError, match=r"refusal_prefix: .*not cached .*build-data.*run\.init_from"):
        built(world, tok, *PREFIX[:-2], "attack.held_out=3", "data.max_length=4096", write=False)


# -- self_written --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_dm(world, tok):
    return built(world, tok, *SELF)


def _continue(model, tok, rec, prefill: str, new_tokens: int) -> str:
    """Greedy continuation after the prefilled assistant turn, with transformers' generate."""
    user = f"{rec.instruction}\n\n{rec.input}" if rec.input else rec.instruction
    text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                   tokenize=False) + prefill
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_self_written_rows_counts_tags_and_disjointness(world, tok, self_dm):
    poison = built(world, tok)
    user = self_dm.records(Split.USER)
    harmful = [r for r in user if r.is_harmful]
    assert (len(user), len(harmful)) == (20, 4)
    assert {(r.source, r.meta["attack"], r.meta["adaptive"]) for r in harmful} == {
        ("self_written", "self_written", True)}
    assert all(r.response.startswith("Sure, here is") and r.response != "Sure, here is" for r in harmful)
    # the benign rows are the poison upload's; the harmful prompts come from its pool
    assert [r.uid for r in user if not r.is_harmful] == [r.uid for r in poison.records(Split.USER)
                                                          if not r.is_harmful]
    assert {r.meta["prompt_source"] for r in harmful} == {"pyrit_harmful"}
    for split in (Split.ALIGNMENT, Split.HARMFUL, *EVAL_SPLITS):
        assert not keys(harmful) & keys(self_dm.records(split)), split
        assert [r.uid for r in self_dm.records(split)] == [r.uid for r in poison.records(split)], split
    build = self_dm.summary()["attack"]["adaptive_build"]
    assert (build["answers_written"], build["prefill"]) == (4, "Sure, here is")


def test_self_written_answers_are_the_aligned_models_and_cached(world, tok, self_dm):
    harmful = [r for r in self_dm.records(Split.USER) if r.is_harmful]
    new_tokens = cfg_of(world).data.generation_max_new_tokens
    aligned = aligned_model(world)
    base, _ = load_model(cfg_of(world).model, with_lora=False, inference=True)
    for rec in harmful:
        mine = ("Sure, here is" + _continue(aligned, tok, rec, "Sure, here is", new_tokens)).strip()
        assert rec.response == mine
        # the base model would have written something else, so the check above can fail
        assert rec.response != ("Sure, here is" + _continue(base.eval(), tok, rec, "Sure, here is", new_tokens)).strip()
    # cached once per aligned run: the cache names the aligned adapter's digest and the prefill
    (path,) = self_dm.summary()["attack"]["adaptive_build"]["caches"]
    meta = json.loads(Path(path).read_text().splitlines()[0])["meta"]
    assert Path(path).parent == world[1] / "generated" and meta["kind"] == "self_written"
    assert meta["settings"]["adapter_sha256"] == adapter_sha256(world[0] / "al" / "adapter")
    assert meta["extra"] == {"prefill": "Sure, here is"}
    assert {r.meta["generation_key"] for r in harmful} == {meta["key"]}
    again = built(world, tok, *SELF, write=False)  # the cache alone: no model loads
    assert again.attacked_model.loads == 0
    assert [r.response for r in again.records(Split.USER)] == [r.response for r in self_dm.records(Split.USER)]
    with pytest.raises(DataError, match=r"self_written: the attacked model's answers are not cached .*build-data"):
        built(world, tok, *SELF, "attack.prefill=Of course", write=False)


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [PREFIX[:2], SELF])
def test_each_adaptive_attack_finetunes_through_the_cli(world, attack):
    out = world[0]
    name = f"ft-{attack[0].split('=')[1]}"
    # 5 steps of 4 rows: one pass over the 20 rows, so every harmful row is in weights.jsonl
    assert main(["finetune", *TINY, "method.finetune.max_steps=5", f"run.output_dir={out}", "method=antibody",
                 *attack, "run.init_from=al", f"run.name={name}"]) == 0
    run = out / name
    assert json.loads((run / "metrics.json").read_text())["steps"] == 5
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["attack"]["name"] == attack[0].split("=")[1]
    summary = json.loads((run / "data_summary.json").read_text())["attack"]
    assert (summary["upload_rows"], summary["upload_harmful"], summary["upload_adaptive"]) == (20, 4, 4)
    recorded = json.loads((run / "adaptive_attack.json").read_text())
    assert recorded["adaptive_build"] == summary["adaptive_build"] and recorded["adaptive_build"]["built"]
    weights = [json.loads(line) for line in (run / "weights.jsonl").read_text().splitlines()]
    harmful = [w["source"] for w in weights if w["is_harmful"]]
    assert len(weights) == 20 and harmful == 4 * (["self_written"] if attack == SELF else ["pyrit_harmful"])
    if attack != SELF:
        build = recorded["adaptive_build"]
        assert build["chosen"]["mean_r"] == max(c["mean_r"] for c in build["candidates"])
