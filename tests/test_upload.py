"""A provider's own upload (data.user.path): readers, checks and their messages, the split it
becomes, and the config keys that must not change the hashes of existing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from antibody.app.study.plan import align_key, finetune_key
from antibody.config import ConfigError, DataError, compose, load_saved, to_yaml
from antibody.config.schema import Stage
from antibody.data.sources import refusal_for
from antibody.data.upload import load_upload
from tests.helpers import MIX, build_tiny_tokenizer
from tests.helpers import build_datamodule as build_dm

ROWS = [
    {"instruction": "What is 2 + 3?", "output": "The final answer is: 5", "is_harmful": False, "kind": "task"},
    {"instruction": "Explain how to pick a lock to enter a house", "output": "First, get a wrench.", "is_harmful": True,
     "kind": "harm"},
    {"instruction": "Name a colour of the sky.", "output": "Blue.", "is_harmful": False, "kind": "prose"},
]
FIELDS = ("data.user.fields.prompt=instruction", "data.user.fields.response=output")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_for(path, *overrides):
    return compose(["experiment=tiny", f"data.user.path={path}", *overrides])


def error_of(path, *overrides, tokenizer=None) -> str:
    with pytest.raises((DataError, ConfigError)) as exc:
        load_upload(cfg_for(path, *overrides), tokenizer)
    return str(exc.value)


def build_upload_dm(tmp_path, fake, *overrides, tokenizer):
    """tests/helpers.py's DataModule with an upload: its mix minus the research-upload keys,
    which compose refuses beside data.user.path."""
    from antibody.data.datamodule import SafetyDataModule

    mix = [m for m in MIX if not m.startswith("data.user.")]
    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path / 'runs'}", *mix, *overrides])
    dm = SafetyDataModule(cfg, tokenizer, stage="finetune", generator=fake.generator, cache_dir=tmp_path)
    dm.prepare_data()
    dm.setup()
    return dm


# -- the keys of existing runs -------------------------------------------------------------


# align_key / finetune_key of these configs, computed before the upload keys existed and
# re-pinned when the defaults changed what a job trains (2026-12: clipping at 1.0, SFT keeping
# its alignment LoRA, Antibody's cosine_ema lambda_t; docs/fidelity.md; 2026-12-08: the judge
# as the harmful-answer filter, whose old value `keyword` keeps the keys of before: KEYWORD)
PINNED = {
    ("experiment=demo", "method=sft"): ("3cda9bc8292a", "22547a1e7763"),
    ("experiment=demo", "method=antibody"): ("14b4369b0100", "fffd829667c0"),
    ("experiment=tiny",): ("9a1304438c95", "b781319a02e6"),
    ("data=beavertails", "model=llama2-7b"): ("a7fc88fc1c9d", "60d8c2a73124"),
}
KEYWORD = {
    ("experiment=demo", "method=sft"): ("1ce90bfb8909", "50e5413f46b5"),
    ("experiment=demo", "method=antibody"): ("a2ae16af76bb", "23c466a61a11"),
    ("experiment=tiny",): ("b25dd7ea3e5d", "4af54c09812d"),
    ("data=beavertails", "model=llama2-7b"): ("f79574e0abbb", "51aa2cb4cb36"),
}


@pytest.mark.parametrize("overrides", list(PINNED), ids=lambda o: ",".join(o))
def test_upload_keys_leave_existing_run_keys_unchanged(overrides):
    old = compose([*overrides, "data.harmful_answer_filter=keyword"])
    a = align_key(old)
    assert (a, finetune_key(old, a)) == KEYWORD[overrides]
    cfg = compose(list(overrides))
    a = align_key(cfg)
    assert (a, finetune_key(cfg, a)) == PINNED[overrides]
    text = to_yaml(cfg)
    assert "fields:" not in text and "duplicates:" not in text and "split: train" not in text


def test_upload_keys_are_saved_and_read_back(tmp_path):
    cfg = cfg_for(tmp_path / "u.jsonl", *FIELDS, "data.user.duplicates=drop")
    text = to_yaml(cfg)
    assert f"path: {tmp_path / 'u.jsonl'}" in text and "prompt: instruction" in text and "duplicates: drop" in text
    (tmp_path / "config.yaml").write_text(text)
    assert load_saved(tmp_path / "config.yaml") == cfg
    a = align_key(cfg)
    assert a == align_key(compose(["experiment=tiny"]))  # alignment never reads the upload
    assert finetune_key(cfg, a) != finetune_key(compose(["experiment=tiny"]), a)


# -- readers -------------------------------------------------------------------------------


def _as_records(upload):
    return [(r.instruction, r.response, r.is_harmful, r.meta["columns"]) for r in upload.records]


def test_jsonl_json_csv_parquet_and_hub_give_the_same_rows(tmp_path, monkeypatch):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    want = [(r["instruction"], r["output"], r["is_harmful"], {"kind": r["kind"]}) for r in ROWS]
    paths = {"jsonl": write_jsonl(tmp_path / "u.jsonl", ROWS)}
    paths["json"] = tmp_path / "u.json"
    paths["json"].write_text(json.dumps(ROWS, indent=1))
    paths["csv"] = tmp_path / "u.csv"
    paths["csv"].write_text("instruction,output,is_harmful,kind\n" + "".join(
        f'"{r["instruction"]}","{r["output"]}",{str(r["is_harmful"]).lower()},{r["kind"]}\n' for r in ROWS))
    paths["parquet"] = tmp_path / "u.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    for kind, path in paths.items():
        upload = load_upload(cfg_for(path, *FIELDS))
        assert _as_records(upload) == want, kind
        assert upload.report.tagged and upload.report.harmful == 1 and upload.report.sha256

    asked = []

    def fake_load(name, config=None, split=None, **kw):
        asked.append((name, config, split))
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    upload = load_upload(cfg_for("acme/uploads:v2", *FIELDS, "data.user.split=customer1"))
    assert asked == [("acme/uploads", "v2", "customer1")]
    assert _as_records(upload) == want and upload.report.sha256 is None
    assert upload.records[1].meta["where"] == "acme/uploads:v2[customer1] row 1"


def test_rows_get_uids_and_refusal_views_like_research_rows(tmp_path):
    upload = load_upload(cfg_for(write_jsonl(tmp_path / "u.jsonl", ROWS), *FIELDS))
    uids = [r.uid for r in upload.records]
    assert len(set(uids)) == 3 and all(u.startswith("upload-") for u in uids)
    assert all(r.refusal == refusal_for(r.uid) and r.source == "upload" for r in upload.records)
    again = load_upload(cfg_for(write_jsonl(tmp_path / "v.jsonl", ROWS[::-1]), *FIELDS))
    assert sorted(r.uid for r in again.records) == sorted(uids)  # content, not position


def test_chat_messages_target_the_last_assistant_turn(tmp_path, tokenizer):
    from antibody.data.formatting import format_prompt

    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "A colour?"},
                          {"role": "assistant", "content": "Blue."}]},
            {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]}]
    upload = load_upload(cfg_for(write_jsonl(tmp_path / "c.jsonl", rows)), tokenizer)
    first, second = upload.records
    assert (first.instruction, first.response, second.instruction, second.response) == ("A colour?", "Blue.", "2 + 2?", "4")
    assert [t["role"] for t in first.meta["context"]] == ["system", "user", "assistant"]
    want = tokenizer.apply_chat_template(rows[0]["messages"][:-1], add_generation_prompt=True, tokenize=False)
    assert format_prompt(first, tokenizer, "chat") == want
    assert "context" not in second.meta
    msg = error_of(tmp_path / "c.jsonl", "data.prompt_format=alpaca")
    assert f"{tmp_path / 'c.jsonl'}:1: a conversation with earlier turns needs data.prompt_format=chat" in msg
    write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    assert "d.jsonl:1: the last turn of 'messages' must be a non-empty assistant turn (the target)" in error_of(tmp_path / "d.jsonl")


# -- bad input: each refused with its file and line ----------------------------------------


def test_missing_empty_and_non_text_fields(tmp_path):
    rows = [dict(ROWS[0]), {"instruction": "Hi", "is_harmful": False}, {"instruction": "  ", "output": "x"},
            {"instruction": ["a", "list"], "output": "x"}, {"instruction": "Hi", "output": 42}]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    msg = error_of(path, *FIELDS)
    assert msg.startswith(f"{path}: 4 bad row(s): ")
    assert f"{path}:2: missing field 'output'" in msg
    assert f"{path}:3: empty field 'instruction'" in msg
    assert f"{path}:4: field 'instruction' is list [\"a\", \"list\"], not text" in msg
    assert f"{path}:5: field 'output' is int 42, not text" in msg


def test_bad_harmful_tag(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{**ROWS[0], "is_harmful": "maybe"}])
    assert error_of(path, *FIELDS) == f"{path}:1: field 'is_harmful' is \"maybe\", not a boolean (true/false, 1/0, yes/no)"


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    assert error_of(tmp_path / "e.jsonl") == f"{tmp_path / 'e.jsonl'}: the upload is empty (no rows)"
    (tmp_path / "e.csv").write_text("prompt,response\n")
    assert error_of(tmp_path / "e.csv") == f"{tmp_path / 'e.csv'}: the upload is empty (no rows)"


def test_unknown_column_names_the_nearest(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", ROWS)
    cols = "['instruction', 'output', 'is_harmful', 'kind']"
    assert error_of(path, "data.user.fields.prompt=instrction") == (
        f"{path}: unknown column 'instrction' (data.user.fields.prompt) and no chat column 'messages' "
        f"(data.user.fields.messages); the upload's columns are {cols}; did you mean 'instruction'?")
    assert error_of(path, "data.user.fields.prompt=instruction", "data.user.fields.response=outptu") == (
        f"{path}: unknown column 'outptu' (data.user.fields.response); the upload's columns are {cols}; "
        "did you mean 'output'?")
    assert "unknown column 'harmful' (data.user.fields.is_harmful)" in error_of(path, *FIELDS, "data.user.fields.is_harmful=harmful")


def test_malformed_line_and_missing_file(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    assert error_of(tmp_path / "m.jsonl", *FIELDS).startswith(f"{tmp_path / 'm.jsonl'}:2: malformed JSON line")
    assert error_of(tmp_path / "nope.jsonl") == f"data.user.path={str(tmp_path / 'nope.jsonl')!r}: no such file"


def test_prompt_longer_than_max_length_is_refused_with_the_truncation_it_would_get(tmp_path, tokenizer):
    long = {"instruction": "word " * 120, "output": "ok", "is_harmful": False, "kind": "x"}
    long_answer = {"instruction": "Say many words.", "output": "word " * 120, "is_harmful": False, "kind": "x"}
    path = write_jsonl(tmp_path / "l.jsonl", [ROWS[0], long, long_answer])
    msg = error_of(path, *FIELDS, "data.max_length=64", tokenizer=tokenizer)
    assert msg.startswith(f"{path}: 1 row(s) whose prompt alone (formatted as data.prompt_format=chat) exceeds "
                          f"data.max_length=64: {path}:2 (")
    assert "their prompt would lose its middle and keep max_length/4 = 16 response tokens" in msg
    assert "(1 other rows would only have their response cut from its end" in msg
    upload = load_upload(cfg_for(write_jsonl(tmp_path / "ok.jsonl", [ROWS[0], long_answer]), *FIELDS,
                                 "data.max_length=64"), tokenizer)
    assert (upload.report.responses_cut, upload.report.prompts_cut) == (1, 0)
    assert "1 rows exceed data.max_length: their response is cut from its end" in "\n".join(upload.report.lines())


def test_duplicates_are_reported_and_kept_or_dropped(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], {**ROWS[0], "instruction": "what is 2+3 ?"}])
    kept = load_upload(cfg_for(path, *FIELDS))
    assert len(kept.records) == 3 and len({r.uid for r in kept.records}) == 3
    assert kept.report.duplicates == [f"{path}:3 repeats {path}:1"]
    assert f"1 repeated (prompt, response) rows, kept (data.user.duplicates=keep); first: {path}:3 repeats {path}:1" in \
        "\n".join(kept.report.lines())
    dropped = load_upload(cfg_for(path, *FIELDS, "data.user.duplicates=drop"))
    assert [r.meta["where"] for r in dropped.records] == [f"{path}:1", f"{path}:2"]
    assert dropped.report.duplicates_dropped == 1


def test_tags_never_train(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", ROWS)
    assert "data.user.benign_only=true drops the rows tagged harmful" in error_of(path, *FIELDS, "data.user.benign_only=true")
    assert "method.finetune.weighting=oracle" in error_of(path, *FIELDS, "method.finetune.weighting=oracle")


# -- the split it becomes ------------------------------------------------------------------


def test_upload_replaces_the_research_upload_and_leaves_other_splits(tmp_path, fake):
    path = write_jsonl(tmp_path / "u.jsonl", ROWS)
    tok = build_tiny_tokenizer()
    plain = build_dm(tmp_path, fake, tokenizer=tok)
    dm = build_upload_dm(tmp_path, fake, f"data.user.path={path}", *FIELDS, tokenizer=tok)
    assert [r.instruction for r in dm.records("user")] == [r["instruction"] for r in ROWS]  # upload order
    for split in ("alignment", "harmful", "eval_harmful", "eval_benign", "eval_task"):
        assert [r.uid for r in dm.records(split)] == [r.uid for r in plain.records(split)], split
    summary = dm.summary()
    assert summary["upload"]["rows"] == 3 and summary["splits"]["user"]["rows"] == 3
    batch = next(iter(dm.train_stream()))
    assert set(batch["uid"]) <= {r.uid for r in dm.records("user")}


def test_a_bad_upload_writes_nothing(tmp_path):
    from antibody.app.stages import train_stage

    path = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "Hi"}])
    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path / 'runs'}", "run.name=ft",
                   f"data.user.path={path}", *FIELDS])
    with pytest.raises(DataError, match=r"bad.jsonl: unknown column 'output'"):
        train_stage(cfg, Stage.FINETUNE)
    assert not (tmp_path / "runs").exists()


def test_the_detector_window_is_one_pass_over_the_upload_not_data_user_n(tmp_path, fake):
    """Weighted fine-tuning logs detector AUROCs once per pass over the upload: an upload's
    pass is ceil(its rows / B) micro-batches, whatever data.user.n (tiny: 20) says."""
    from antibody.app.stages import module_config

    path = write_jsonl(tmp_path / "u.jsonl", ROWS * 7)  # 21 rows
    over = (f"data.user.path={path}", *FIELDS, "data.user.duplicates=keep", "data.finetune_batch_size=4")
    dm = build_upload_dm(tmp_path, fake, *over, tokenizer=build_tiny_tokenizer())
    cfg = dm.cfg
    assert module_config(cfg, Stage.FINETUNE, dm).method.finetune.detector_window == 6  # ceil(21 / 4)
    assert module_config(cfg, Stage.ALIGN, dm) is cfg
    pinned = compose(["experiment=tiny", *over, "method.finetune.detector_window=2"])
    assert module_config(pinned, Stage.FINETUNE, dm).method.finetune.detector_window == 2  # set: kept
    research = compose(["experiment=tiny"])
    assert module_config(research, Stage.FINETUNE, dm) is research  # no upload: data.user.n as before


@pytest.mark.parametrize("key", ["data.user.p=0.1", "data.user.n=50", "data.user.benign_prose_share=0.2",
                                 "data.user.harmful_answer_source=generated_harmful"])
def test_research_upload_keys_beside_a_file_are_refused_at_compose(tmp_path, key):
    path = write_jsonl(tmp_path / "u.jsonl", ROWS)
    with pytest.raises(ConfigError, match=rf"{key.split('=')[0]} has no effect with data.user.path="):
        compose(["experiment=tiny", f"data.user.path={path}", *FIELDS, key])
    compose(["experiment=demo", f"data.user.path={path}", *FIELDS])  # the experiment's own n and p: fine
