"""SafeInstr: the mixed upload (counts, tags, disjointness from evaluation, determinism),
its pool check, the split the fine-tuning stage trains on, and a training run on it."""

from __future__ import annotations

import pytest
import torch

from antibody.config import compose
from antibody.config.errors import DataError
from antibody.config.schema import Stage
from antibody.data.datamodule import SafetyDataModule
from antibody.data.plan import EVAL_SPLITS, Split, floor_share, train_split_for
from antibody.data.streams import take
from antibody.models import load_model, load_tokenizer
from tests._synthetic import finetune_module, trainer
from tests.helpers import build_datamodule as build

SAFEINSTR = ("method.finetune.method=safeinstr", "method.finetune.weighting=uniform")


def _keys(rows) -> set[str]:
    return {r.prompt_key() for r in rows}


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The tiny config on the real offline sources, share 0.25: 5 demonstrations for 20 rows."""
    root = tmp_path_factory.mktemp("safeinstr")
    cfg = compose(
        [
            "experiment=tiny",
            f"run.output_dir={root / 'runs'}",
            *SAFEINSTR,
            "method.finetune.safeinstr.share=0.25",
        ]
    )
    dm = SafetyDataModule(cfg, load_tokenizer(cfg.model), "finetune", cache_dir=root / "cache")
    dm.setup()
    return dm


def test_mixed_upload_counts_tags_and_split(real):
    cfg = real.cfg
    n, share = cfg.data.user.n, cfg.method.finetune.safeinstr.share
    user, mixed = real.records(Split.USER), real.records(Split.USER_SAFEINSTR)
    demos = [r for r in mixed if r.source == "safeinstr"]
    assert len(demos) == floor_share(share, n) == 5 and len(mixed) == n + 5
    assert [r.uid for r in mixed if r.source != "safeinstr"] != [r.uid for r in user]  # shuffled in
    assert sorted(r.uid for r in mixed if r.source != "safeinstr") == sorted(r.uid for r in user)
    n_harmful = floor_share(cfg.data.user.p, n)
    assert sum(r.is_harmful for r in mixed) == sum(r.is_harmful for r in user) == n_harmful > 0
    # demonstrations: the provider's aligned harmful prompts with their refusals, tagged safe
    refusals = {r.uid: r for r in real.records(Split.ALIGNMENT) if r.is_harmful}
    for d in demos:
        src = refusals[d.meta["from_uid"]]
        assert not d.is_harmful and d.meta["prompt_source"] == src.source
        assert (d.prompt_key(), d.response, d.refusal) == (src.prompt_key(), src.response, src.refusal)
    assert len({d.uid for d in demos}) == 5 and not {d.uid for d in demos} & {r.uid for r in user}
    # no demonstration prompt (normalised) is in any evaluation split
    for split in EVAL_SPLITS:
        assert not _keys(demos) & _keys(real.records(split)), split
    # the fine-tuning stage trains on the mix; the benign-only control drops the user's harmful rows only
    assert real.train_split is Split.USER_SAFEINSTR is train_split_for(cfg, Stage.FINETUNE)
    control = real.records(Split.USER_SAFEINSTR_BENIGN_ONLY)
    assert [r.uid for r in control] == [r.uid for r in mixed if not r.is_harmful]
    assert sum(r.source == "safeinstr" for r in control) == 5
    # 25 rows in batches of 4: an epoch is 6 batches (a last batch of 1 row is dropped)
    streamed = [u for item in take(real.train_stream(0), 6) for u in item["uid"]]
    assert len(set(streamed)) == 24 and set(streamed) <= {r.uid for r in mixed}


def test_new_datamodule_picks_the_safeinstr_split(tmp_path):
    from antibody.app.stages import new_datamodule

    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}", *SAFEINSTR])
    tok = load_tokenizer(cfg.model)
    assert new_datamodule(cfg, tok, Stage.FINETUNE).train_split is Split.USER_SAFEINSTR
    assert new_datamodule(cfg, tok, Stage.ALIGN).train_split is Split.ALIGNMENT
    cfg.data.user.benign_only = True
    assert new_datamodule(cfg, tok, Stage.FINETUNE).train_split is Split.USER_SAFEINSTR_BENIGN_ONLY


def test_mixed_upload_is_deterministic_under_the_seed(tmp_path, fake):
    over = (*SAFEINSTR, "method.finetune.safeinstr.share=0.3", "data.user.p=0.2")
    uids = [r.uid for r in build(tmp_path, fake, *over).records(Split.USER_SAFEINSTR)]
    assert len(uids) == 26
    assert [r.uid for r in build(tmp_path, fake, *over).records(Split.USER_SAFEINSTR)] == uids
    other = build(tmp_path, fake, *over, "data.seed=7").records(Split.USER_SAFEINSTR)
    assert [r.uid for r in other] != uids
    # another method builds no mix (its pool check cannot fail a run that does not use it)
    assert build(tmp_path, fake, "data.user.p=0.2").records(Split.USER_SAFEINSTR) == []


def test_too_few_refusal_rows_names_the_share(tmp_path, fake):
    # 20 user rows at share 0.9 need 18 demonstrations; the alignment split has 16 refusal rows
    with pytest.raises(
        DataError,
        match=r"method.finetune.safeinstr.share=0.9: .* = 18 safety demonstrations .* only 16 .* at most 0.8",
    ):
        build(tmp_path, fake, *SAFEINSTR, "method.finetune.safeinstr.share=0.9")
    assert fake.generated == []  # checked before any model-written row
    largest = build(tmp_path, fake, *SAFEINSTR, "method.finetune.safeinstr.share=0.8")
    assert len(largest.records(Split.USER_SAFEINSTR)) == 20 + 16


def test_a_share_below_one_row_warns_and_trains_on_the_users_rows(tmp_path, fake, caplog):
    # 0.03 * 20 < 1: small pipeline checks still run, and the log says the run is SFT
    with caplog.at_level("WARNING", logger="antibody.data.safeinstr"):
        dm = build(tmp_path, fake, *SAFEINSTR)
    assert "method.finetune.safeinstr.share=0.03" in caplog.text and "share >= 0.05 gives one" in caplog.text
    mixed = dm.records(Split.USER_SAFEINSTR)
    assert sorted(r.uid for r in mixed) == sorted(r.uid for r in dm.records(Split.USER))
    assert dm.train_split is Split.USER_SAFEINSTR and len(take(dm.train_stream(0), 1)[0]["uid"]) == 4


def test_safeinstr_finetuning_trains_on_the_demonstrations(real, tmp_path):
    from antibody.methods.weighted_finetune import WeightedFinetuneModule

    torch.manual_seed(0)
    model, _ = load_model(real.cfg.model)
    model.train()
    module = finetune_module(WeightedFinetuneModule, model, real.cfg)
    trainer(6, tmp_path).fit(module, datamodule=real)  # one epoch of the mix
    records = module.weight_records()
    assert {r["uid"] for r in records} <= {r.uid for r in real.records(Split.USER_SAFEINSTR)}
    demos = [r for r in records if r["source"] == "safeinstr"]
    assert len(demos) >= 4 and not any(r["is_harmful"] for r in demos)


def test_replace_mix_keeps_the_size_and_every_harmful_row(tmp_path, fake):
    # Lisa's repository's mixing: the demonstrations take the place of benign rows (total n)
    over = (*SAFEINSTR, "method.finetune.safeinstr.share=0.3", "data.user.p=0.2")
    added = build(tmp_path, fake, *over)
    replaced = build(tmp_path, fake, *over, "method.finetune.safeinstr.mix=replace")
    user, mixed = replaced.records(Split.USER), replaced.records(Split.USER_SAFEINSTR)
    assert [r.uid for r in user] == [r.uid for r in added.records(Split.USER)]  # same upload
    demos = [r for r in mixed if r.source == "safeinstr"]
    rest = [r for r in mixed if r.source != "safeinstr"]
    assert len(demos) == 6 and len(mixed) == len(user) == 20
    assert {r.uid for r in user if r.is_harmful} <= {r.uid for r in rest}  # all 4 harmful rows kept
    dropped = {r.uid for r in user} - {r.uid for r in rest}
    assert len(dropped) == 6 and not any(r.is_harmful for r in user if r.uid in dropped)
    assert [r.uid for r in build(tmp_path, fake, *over, "method.finetune.safeinstr.mix=replace")
            .records(Split.USER_SAFEINSTR)] == [r.uid for r in mixed]  # seeded
    # the default adds on top
    assert len(added.records(Split.USER_SAFEINSTR)) == 26


def test_replace_mix_needs_enough_benign_rows(tmp_path, fake):
    # p=0.5: 10 benign rows of 20; share 0.55 asks for 11 demonstrations (16 refusal rows exist)
    with pytest.raises(DataError, match=r"mix=replace: 11 safety demonstrations .* only 10 benign rows"):
        build(tmp_path, fake, *SAFEINSTR, "data.user.p=0.5", "method.finetune.safeinstr.share=0.55",
              "method.finetune.safeinstr.mix=replace")
    assert fake.generated == []  # checked before any model-written row


def test_replace_mix_rejects_an_unknown_mode():
    from antibody.config.errors import ConfigError

    with pytest.raises(ConfigError, match="mix"):
        compose(["experiment=tiny", *SAFEINSTR, "method.finetune.safeinstr.mix=swap"])


def test_replace_mix_on_a_providers_upload_ignores_its_analysis_tags():
    # an upload's is_harmful column is for analysis only: replace draws from every row
    from antibody.config.baselines import SafeInstrMix
    from antibody.data.records import Record
    from antibody.data.safeinstr import safeinstr_upload

    user = [Record(uid=f"u{i}", source="upload", instruction=f"q{i}", response="a", refusal="r",
                   is_harmful=i < 15) for i in range(20)]
    refusals = [Record(uid=f"a{i}", source="advbench", instruction=f"h{i}", response="no", refusal="no",
                       is_harmful=True) for i in range(10)]
    drops = set()
    for seed in range(40):
        mixed = safeinstr_upload(user, refusals, 8, seed, SafeInstrMix.REPLACE, tags_known=False)
        assert len(mixed) == 20 and sum(r.source == "safeinstr" for r in mixed) == 8
        drops |= {r.uid for r in user} - {r.uid for r in mixed}
        known = safeinstr_upload(user, refusals, 4, seed, SafeInstrMix.REPLACE, tags_known=True)
        assert len(known) == 20 and {r.uid for r in user if r.is_harmful} <= {m.uid for m in known}
    assert any(u in drops for u in (f"u{i}" for i in range(15)))  # tagged rows were drawn too


def test_the_new_options_leave_existing_run_keys_alone():
    # at their defaults mix and mask are not serialised, so studies keep their job keys
    from antibody.config.compose import to_yaml

    plain = to_yaml(compose(["experiment=tiny", *SAFEINSTR]))
    assert "mix:" not in plain and "mask:" not in plain
    assert "mix: replace" in to_yaml(compose(["experiment=tiny", *SAFEINSTR, "method.finetune.safeinstr.mix=replace"]))
    assert "mask: differing" in to_yaml(compose(["experiment=tiny", "method=repnoise",
                                                 "method.align.repnoise.mask=differing"]))
