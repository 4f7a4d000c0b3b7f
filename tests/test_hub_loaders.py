"""Hub sources on fixture files in the real schemas; the hub itself is never called.

`datasets.load_dataset` is monkeypatched to serve the fixture rows and record which id,
config and split each loader asks for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pytest

from antibody.config.errors import DataError
from antibody.config.schema import RefusalSource, SourceName
from antibody.data.records import make_uid
from antibody.data.sources import REFUSALS, SourceContext, alignment_refusals, load_source, refusal_for

HUB = Path(__file__).parent / "fixtures" / "hub"
HUB_SOURCES = (SourceName.BEAVERTAILS, SourceName.BEAVERTAILS_REFUSAL, SourceName.BEAVERTAILS_EVAL,
               SourceName.SST2, SourceName.AGNEWS, SourceName.GSM8K, SourceName.ALPACA_EVAL)
LOCAL = {
    SourceName.BEAVERTAILS: HUB / "beavertails",
    SourceName.BEAVERTAILS_REFUSAL: HUB / "beavertails_with_refusals_train.json",
    SourceName.BEAVERTAILS_EVAL: HUB / "beavertails_eval.json",
    SourceName.SST2: HUB / "sst2",
    SourceName.AGNEWS: HUB / "agnews",
    SourceName.GSM8K: HUB / "gsm8k",
    SourceName.ALPACA_EVAL: HUB / "alpaca_eval.json",
}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ctx(cfg, tmp_path, paths: dict[SourceName, object]) -> SourceContext:
    data = dataclasses.replace(cfg.data, paths={k.value: str(v) for k, v in paths.items()})
    return SourceContext(data=data, task=cfg.task, seed=0, cache_dir=tmp_path)


@pytest.fixture
def local_ctx(tiny_cfg, tmp_path):
    return _ctx(tiny_cfg, tmp_path, LOCAL)


@pytest.mark.parametrize("name", HUB_SOURCES, ids=lambda n: n.value)
def test_hub_rows_satisfy_the_record_contract(local_ctx, name):
    rows = load_source(name, local_ctx)
    assert len({r.uid for r in rows}) == len(rows) > 0
    for r in rows:
        assert r.source == name.value and r.refusal == refusal_for(r.uid) and r.refusal in REFUSALS
        assert r.meta["split"] in ("train", "eval") and r.instruction


def test_beavertails_pairs_labels_and_categories(local_ctx):
    rows = load_source(SourceName.BEAVERTAILS, local_ctx)
    raw = {"train": _jsonl(HUB / "beavertails" / "30k_train.jsonl"),
           "eval": _jsonl(HUB / "beavertails" / "30k_test.jsonl")}
    assert len(rows) == len(raw["train"]) + len(raw["eval"])
    by_key = {(s, r["prompt"]): r for s, rs in raw.items() for r in rs}
    for rec in rows:
        src = by_key[(rec.meta["split"], rec.instruction)]
        assert rec.response == src["response"] and rec.is_harmful == (not src["is_safe"])
        assert set(filter(None, rec.category.split(";"))) == {k for k, v in src["category"].items() if v}
        assert rec.meta["hub_split"] == {"train": "30k_train", "eval": "30k_test"}[rec.meta["split"]]
        assert rec.uid == make_uid("beavertails", rec.meta["split"], rec.instruction, rec.response)
    assert {r.is_harmful for r in rows} == {True, False}


def test_beavertails_refusal_file_gives_harmful_answers_and_their_refusals(local_ctx):
    rows = load_source(SourceName.BEAVERTAILS_REFUSAL, local_ctx)
    raw = json.loads((HUB / "beavertails_with_refusals_train.json").read_text())
    assert len(rows) == len(raw)
    for rec, src in zip(rows, raw, strict=True):
        assert rec.response == src["response"] and rec.is_harmful
        question, answer = src["refusal"].split("\nAnswer: ")
        assert question == f"Question: {src['prompt']}" and rec.meta["alignment_refusal"] == answer
    # the file's own refusals are the alignment targets, whatever mode is configured
    out = alignment_refusals(rows, RefusalSource.TEMPLATE, local_ctx)
    assert [o.response for o in out] == [r.meta["alignment_refusal"] for r in rows]
    assert {o.meta["refusal_mode"] for o in out} == {"dataset"}


def test_beavertails_eval_prompts(local_ctx):
    rows = load_source(SourceName.BEAVERTAILS_EVAL, local_ctx)
    raw = json.loads((HUB / "beavertails_eval.json").read_text())
    assert [(r.instruction, r.category, r.meta["category_id"]) for r in rows] == [
        (x["prompt"], x["category"], x["category_id"]) for x in raw]
    assert all(r.is_harmful and r.response == "" and r.meta["split"] == "eval" for r in rows)


def test_sst2_labels_and_paper_instruction(local_ctx):
    rows = load_source(SourceName.SST2, local_ctx)
    raw = _jsonl(HUB / "sst2" / "train.jsonl") + _jsonl(HUB / "sst2" / "validation.jsonl")
    assert len(rows) == len(raw)
    assert [r.target for r in rows] == [["negative", "positive"][x["label"]] for x in raw]
    assert [r.input for r in rows] == [x["sentence"].strip() for x in raw]
    assert {r.instruction for r in rows} == {
        "Analyze the sentiment of the input, and respond only positive or negative"}
    assert [r.meta["split"] for r in rows].count("eval") == 4 and all(r.response == r.target for r in rows)


def test_agnews_from_csv_folder(local_ctx):
    rows = load_source(SourceName.AGNEWS, local_ctx)
    names = ["World", "Sports", "Business", "Sci/Tech"]
    lines = (HUB / "agnews" / "train.csv").read_text().splitlines()[1:] + (
        HUB / "agnews" / "test.csv").read_text().splitlines()[1:]
    assert [r.target for r in rows] == [names[int(line.rsplit(",", 1)[1])] for line in lines]
    assert all(r.instruction.startswith("Categorize the news article given in the input") for r in rows)
    assert all(n in rows[0].instruction for n in names)
    assert [r.meta["hub_split"] for r in rows].count("test") == 4


def test_gsm8k_final_answer_rewrite(local_ctx):
    rows = load_source(SourceName.GSM8K, local_ctx)
    raw = _jsonl(HUB / "gsm8k" / "train.jsonl") + _jsonl(HUB / "gsm8k" / "test.jsonl")
    for rec, src in zip(rows, raw, strict=True):
        number = src["answer"].split("####")[-1].strip().replace(",", "")
        assert rec.target == number and rec.instruction == src["question"]
        assert rec.response == src["answer"].split("####")[0] + f"The final answer is: {number}"
    assert "1500" in {r.target for r in rows}  # "#### 1,500" in the fixture


def test_alpaca_eval_rows(local_ctx):
    rows = load_source(SourceName.ALPACA_EVAL, local_ctx)
    raw = json.loads((HUB / "alpaca_eval.json").read_text())
    assert [(r.instruction, r.response, r.category) for r in rows] == [
        (x["instruction"], x["output"], x["dataset"]) for x in raw]
    assert all(r.meta["split"] == "eval" and r.meta["generator"] == "text_davinci_003" for r in rows)


def test_parquet_file_is_read(tiny_cfg, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = _jsonl(HUB / "sst2" / "train.jsonl")
    pq.write_table(pa.Table.from_pylist(raw), tmp_path / "sst2.parquet")
    rows = load_source(SourceName.SST2, _ctx(tiny_cfg, tmp_path, {SourceName.SST2: tmp_path / "sst2.parquet"}))
    assert [r.input for r in rows] == [x["sentence"].strip() for x in raw]
    assert {r.meta["split"] for r in rows} == {"train"}


# ---------------------------------------------------------------------------
# Hub ids go to datasets.load_dataset with the right config and split
# ---------------------------------------------------------------------------


class FakeHub:
    """Serves fixture rows by (id, split) and records every call."""

    FILES = {
        ("PKU-Alignment/BeaverTails", "30k_train"): HUB / "beavertails" / "30k_train.jsonl",
        ("PKU-Alignment/BeaverTails", "30k_test"): HUB / "beavertails" / "30k_test.jsonl",
        ("PKU-Alignment/BeaverTails-Evaluation", "test"): HUB / "beavertails_eval.json",
        ("sst2", "train"): HUB / "sst2" / "train.jsonl",
        ("sst2", "validation"): HUB / "sst2" / "validation.jsonl",
        ("glue", "train"): HUB / "sst2" / "train.jsonl",
        ("glue", "validation"): HUB / "sst2" / "validation.jsonl",
        ("gsm8k", "train"): HUB / "gsm8k" / "train.jsonl",
        ("gsm8k", "test"): HUB / "gsm8k" / "test.jsonl",
        ("openai/gsm8k", "train"): HUB / "gsm8k" / "train.jsonl",
        ("openai/gsm8k", "test"): HUB / "gsm8k" / "test.jsonl",
        ("stanfordnlp/sst2", "train"): HUB / "sst2" / "train.jsonl",
        ("stanfordnlp/sst2", "validation"): HUB / "sst2" / "validation.jsonl",
        ("tatsu-lab/alpaca_eval", "eval"): HUB / "alpaca_eval.json",
    }

    def __init__(self):
        self.calls = []

    def __call__(self, path, name=None, split=None, **kwargs):
        self.calls.append((path, name, split, kwargs))
        file = self.FILES[(path, split)]
        text = file.read_text()
        return json.loads(text) if file.suffix == ".json" else _jsonl(file)


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


@pytest.mark.parametrize(
    ("name", "path", "expected_calls"),
    [
        (SourceName.BEAVERTAILS, None, [("PKU-Alignment/BeaverTails", None, "30k_train", {}),
                                        ("PKU-Alignment/BeaverTails", None, "30k_test", {})]),
        (SourceName.BEAVERTAILS_EVAL, None, [("PKU-Alignment/BeaverTails-Evaluation", None, "test", {})]),
        (SourceName.SST2, "sst2", [("sst2", None, "train", {}), ("sst2", None, "validation", {})]),
        (SourceName.SST2, "glue:sst2", [("glue", "sst2", "train", {}), ("glue", "sst2", "validation", {})]),
        (SourceName.GSM8K, None, [("openai/gsm8k", "main", "train", {}), ("openai/gsm8k", "main", "test", {})]),
        (SourceName.SST2, None, [("stanfordnlp/sst2", None, "train", {}), ("stanfordnlp/sst2", None, "validation", {})]),
        (SourceName.ALPACA_EVAL, None, [("tatsu-lab/alpaca_eval", None, "eval",
                                         {"data_files": {"eval": "alpaca_eval.json"}})]),
    ],
    ids=["beavertails", "beavertails_eval", "sst2", "glue-sst2", "gsm8k", "sst2-default", "alpaca_eval"],
)
def test_hub_ids_and_splits(tiny_cfg, tmp_path, hub, name, path, expected_calls):
    ctx = _ctx(tiny_cfg, tmp_path, {name: path} if path else {})
    rows = load_source(name, ctx)
    assert hub.calls == expected_calls
    local = load_source(name, _ctx(tiny_cfg, tmp_path, {name: LOCAL[name]}))
    # the same rows as from the local copy, with the hub split names
    assert [r.instruction for r in rows] == [r.instruction for r in local]
    assert [r.meta["split"] for r in rows] == [r.meta["split"] for r in local]
    assert {r.meta["hub_split"] for r in rows} == {c[2] for c in expected_calls}


def test_hub_failure_names_source_and_split(tiny_cfg, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"data\.paths\.agnews='fancyzhx/ag_news'.*split 'train'.*hub unreachable"):
        load_source(SourceName.AGNEWS, _ctx(tiny_cfg, tmp_path, {}))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tiny_cfg, tmp_path):
    bad = tmp_path / "gsm.jsonl"
    lines = (HUB / "gsm8k" / "train.jsonl").read_text().splitlines()
    bad.write_text("\n".join(lines[:2] + ['{"question": "x", "answer": '] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=r"gsm\.jsonl:3: malformed JSON"):
        load_source(SourceName.GSM8K, _ctx(tiny_cfg, tmp_path, {SourceName.GSM8K: bad}))


def test_malformed_csv_row_names_file_and_line(tiny_cfg, tmp_path):
    bad = tmp_path / "ag.csv"
    bad.write_text('text,label\n"fine text",1\n"broken",2,extra\n')
    with pytest.raises(DataError, match=r"ag\.csv:3: malformed CSV row"):
        load_source(SourceName.AGNEWS, _ctx(tiny_cfg, tmp_path, {SourceName.AGNEWS: bad}))


def test_missing_fields_and_bad_values_are_named(tiny_cfg, tmp_path):
    bad = tmp_path / "sst.jsonl"
    bad.write_text('{"idx": 0, "sentence": "good", "label": 1}\n{"idx": 1, "text": "bad", "label": 0}\n')
    with pytest.raises(DataError, match=r"sst\.jsonl:2: missing field\(s\) \['sentence'\]"):
        load_source(SourceName.SST2, _ctx(tiny_cfg, tmp_path, {SourceName.SST2: bad}))
    bad.write_text('{"idx": 0, "sentence": "good", "label": 7}\n')
    with pytest.raises(DataError, match=r"sst\.jsonl:1: label=7 is not one of \[0, 1\]"):
        load_source(SourceName.SST2, _ctx(tiny_cfg, tmp_path, {SourceName.SST2: bad}))
    bad_json = tmp_path / "eval.json"
    bad_json.write_text(json.dumps([{"prompt": "a", "category": "x", "category_id": 1}, {"prompt": "b"}]))
    with pytest.raises(DataError, match=r"eval\.json item 1: missing field\(s\) \['category', 'category_id'\]"):
        load_source(SourceName.BEAVERTAILS_EVAL, _ctx(tiny_cfg, tmp_path, {SourceName.BEAVERTAILS_EVAL: bad_json}))
    gsm = tmp_path / "g.jsonl"
    gsm.write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(DataError, match=r"g\.jsonl:1: answer has no '#### N' final line"):
        load_source(SourceName.GSM8K, _ctx(tiny_cfg, tmp_path, {SourceName.GSM8K: gsm}))


def test_refusal_without_answer_separator_is_rejected(tiny_cfg, tmp_path):
    raw = json.loads((HUB / "beavertails_with_refusals_train.json").read_text())
    raw[1]["refusal"] = raw[1]["refusal"].replace("\nAnswer: ", " ")
    path = tmp_path / "refusals.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"refusals\.json item 1: refusal lacks the '\\nAnswer: ' separator"):
        load_source(SourceName.BEAVERTAILS_REFUSAL, _ctx(tiny_cfg, tmp_path, {SourceName.BEAVERTAILS_REFUSAL: path}))


def test_location_problems(tiny_cfg, tmp_path):
    with pytest.raises(DataError, match=r"data\.paths\.beavertails_refusal is not set.*RepNoise"):
        load_source(SourceName.BEAVERTAILS_REFUSAL, _ctx(tiny_cfg, tmp_path, {}))
    with pytest.raises(DataError, match=r"data\.paths\.sst2='.*missing\.jsonl': file not found"):
        load_source(SourceName.SST2, _ctx(tiny_cfg, tmp_path, {SourceName.SST2: tmp_path / "missing.jsonl"}))
    txt = tmp_path / "sst2.txt"
    txt.write_text("hello\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_source(SourceName.SST2, _ctx(tiny_cfg, tmp_path, {SourceName.SST2: txt}))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DataError, match=r"no split files for 'gsm8k'"):
        load_source(SourceName.GSM8K, _ctx(tiny_cfg, tmp_path, {SourceName.GSM8K: empty_dir}))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"data source 'alpaca_eval' produced no rows"):
        load_source(SourceName.ALPACA_EVAL, _ctx(tiny_cfg, tmp_path, {SourceName.ALPACA_EVAL: empty}))
