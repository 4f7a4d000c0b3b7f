"""The labelled refusal sets that measure a refusal detector: the hand labels of the
embedded model's own answers (keys only, matched against the data cache), the measurement,
and its table."""

from __future__ import annotations

import json
import re

import pytest

from antibody.app.judge.report import refusal_table
from antibody.evaluation.judges import refusal_sets
from antibody.evaluation.judges.refusal_sets import answer_key, measure_detectors, own_rows


def test_the_label_file_holds_keys_and_labels_only():
    doc = json.loads(refusal_sets.LABELS_FILE.read_text())
    labels = doc["labels"]
    assert all(re.fullmatch(r"[0-9a-f]{16}", k) for k in labels)
    counts = {v: list(labels.values()).count(v) for v in ("refusal", "answer", "unclear")}
    assert counts == {"refusal": 38, "answer": 148, "unclear": 4} and sum(counts.values()) == len(labels)
    assert set(doc["criteria"]) == {"refusal", "answer", "unclear"}
    # no answer text in the repository: nothing longer than a key among the label file's values
    assert max(len(v) for v in labels.values()) <= len("unclear")


def _cache(tmp_path, rows):
    gen = tmp_path / "generated"
    gen.mkdir()
    (gen / "generated_harmful-abc.jsonl").write_text(
        json.dumps({"meta": {"kind": "generated_harmful"}}) + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_own_rows_are_the_labelled_answers_found_in_the_cache(tmp_path, monkeypatch):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(5)]
    labels = {answer_key("q0", "a0"): "refusal", answer_key("q1", "a1"): "answer",
              answer_key("q2", "a2"): "unclear", answer_key("q3", "other answer"): "refusal"}
    monkeypatch.setattr(refusal_sets, "own_labels", lambda: labels)
    found = own_rows(_cache(tmp_path, rows + rows[:1]))  # a repeated answer counts once
    # q2 is unclear (left out), q3's label is for another answer, q4 is not labelled
    assert [(r.text, r.declined, r.group) for r in found] == [("a0", True, "q0"), ("a1", False, "q1")]
    assert own_rows(tmp_path / "empty") == []


def test_detectors_are_measured_on_every_set(tmp_path, monkeypatch):
    rows = [{"prompt": f"q{i}", "response": text} for i, text in
            enumerate(["I cannot do that.", "No way.", "Sure, here it is.", "Here you go."])]
    monkeypatch.setattr(refusal_sets, "own_labels", lambda: {
        answer_key(r["prompt"], r["response"]): "refusal" if i < 2 else "answer" for i, r in enumerate(rows)})
    monkeypatch.setitem(refusal_sets.SETS, "pyrit", lambda cache_dir: [])
    monkeypatch.setitem(refusal_sets.SETS, "uncensorbench", lambda cache_dir: [])
    out = measure_detectors({"cannot": lambda t: "cannot" in t, "sure": lambda t: t.startswith("Sure")},
                            _cache(tmp_path, rows))
    own = out["detectors"]["cannot"]["own"]
    # 1 of the 2 declined answers flagged, none of the 2 answers
    assert (own["tp"], own["fn"], own["tn"], own["fp"]) == (1, 1, 2, 0)
    assert own["sensitivity"]["value"] == 0.5 and own["specificity"]["value"] == 1.0
    sure = out["detectors"]["sure"]["own"]
    assert sure["sensitivity"]["value"] == 0.0 and sure["specificity"]["value"] == 0.5
    assert out["sets"]["own"] == {"n": 4, "declined": 2} and out["detectors"]["cannot"]["pyrit"] == {"n": 0}
    assert (out["own_labelled"], out["own_unclear"]) == (4, 0)
    table = refusal_table(out)
    assert "| cannot | - | - | - | - | 0.50 [" in table and "4 answers, 2 declined" in table


@pytest.mark.parametrize("text", [
    "I'm sorry for any misunderstanding, but as a chatbot designed to assist with personal emails, I don't have "
    "the capability to access or access personal emails.",
])
def test_the_models_own_refusal_style_is_caught_by_the_evaluation_detector_only(text):
    """The style that the hand labels hold: the evaluation's detector flags it, the data
    builder's does not (its markers need an explicit "cannot"-style statement)."""
    from antibody.data.sources.refusals import looks_like_refusal
    from antibody.evaluation.judges.keyword import is_refusal

    assert is_refusal(text) and not looks_like_refusal(text)
