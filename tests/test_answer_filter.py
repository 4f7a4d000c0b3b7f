"""Which model-written answers to harmful prompts become harmful rows
(data.harmful_answer_filter): the three filters, the judge's verdict cache, and the
generated source that applies them."""

from __future__ import annotations

import json

import pytest

from antibody.config import compose
from antibody.config.errors import DataError
from antibody.config.schema import AnswerFilter, SourceName
from antibody.data.sources.answer_filter import (
    DECLINED,
    NOT_HARMFUL,
    answer_key,
    dropped_reasons,
    verdict_path,
)
from antibody.data.sources.generated import answer_prompts
from antibody.data.sources.registry import SourceContext
from tests.helpers import fake_record

# the embedded model's own refusal style, which the data builder's keyword list missed
OWN_STYLE = ("I'm sorry for any misunderstanding, but as a chatbot designed to assist with personal emails, "
             "I don't have the capability to access or access personal emails.")
PAIRS = [("q0", "Step 1: get the tools. Step 2: ..."), ("q1", OWN_STYLE), ("q2", "I cannot help with that."),
         ("q3", "That claim is false: people there are kind."), ("q4", "   ")]


class FakeJudge:
    version, threshold = "fake:v1", 0.5

    def __init__(self, scores: dict[str, float]):
        self.table, self.calls = scores, []

    def scores(self, prompts, answers):
        self.calls.append(list(prompts))
        return [self.table[p] for p in prompts]


def test_each_filter_drops_what_it_says(tmp_path):
    assert dropped_reasons(PAIRS, AnswerFilter.KEYWORD) == [None, None, DECLINED, None, DECLINED]
    assert dropped_reasons(PAIRS, AnswerFilter.REFUSAL) == [None, DECLINED, DECLINED, None, DECLINED]
    judge = FakeJudge({"q0": 0.9, "q3": 0.5})  # 0.5 is not above the threshold
    got = dropped_reasons(PAIRS, AnswerFilter.JUDGE, judge=judge, version=judge.version, threshold=0.5,
                          cache_dir=tmp_path)
    assert got == [None, DECLINED, DECLINED, NOT_HARMFUL, DECLINED]
    assert judge.calls == [["q0", "q3"]]  # declined answers are never scored


def test_the_judges_verdicts_are_cached_per_judge_version(tmp_path):
    judge = FakeJudge({"q0": 0.9, "q3": 0.1})
    kw = dict(version="fake:v1", threshold=0.5, cache_dir=tmp_path)
    first = dropped_reasons(PAIRS, AnswerFilter.JUDGE, judge=judge, **kw)
    doc = json.loads(verdict_path(tmp_path, "fake:v1").read_text())
    assert doc["judge"] == "fake:v1" and doc["scores"] == {answer_key("q0", PAIRS[0][1]): 0.9,
                                                           answer_key("q3", PAIRS[3][1]): 0.1}
    # a reader without the judge (setup(), another rank) gets the same verdicts from the file
    assert dropped_reasons(PAIRS, AnswerFilter.JUDGE, judge=None, **kw) == first
    # another judge version has no verdicts yet: named, with the command that fills the cache
    with pytest.raises(DataError, match=r"verdicts on 2 model-written answers are not cached .* build-data"):
        dropped_reasons(PAIRS, AnswerFilter.JUDGE, judge=None, **dict(kw, version="fake:v2"))
    verdict_path(tmp_path, "fake:v1").write_text("{not json")
    with pytest.raises(DataError, match=r"not a verdict cache .* delete it"):
        dropped_reasons(PAIRS, AnswerFilter.JUDGE, judge=None, **kw)


def _ctx(tmp_path, mode: AnswerFilter, answers: dict[str, str], judge=None, generate=True):
    cfg = compose(["experiment=tiny", f"data.harmful_answer_filter={mode.value}"])
    drops: dict = {}
    ctx = SourceContext(data=cfg.data, task=cfg.task, seed=0, cache_dir=tmp_path,
                        generator=(lambda prompts: [answers[p] for p in prompts]) if generate else None,
                        generator_settings={"model": "fake"}, answer_judge=judge, drops=drops)
    return ctx, drops


def test_the_generated_source_keeps_only_flagged_non_refusals(tmp_path):
    answers = dict(PAIRS)
    prompts = [fake_record(SourceName.ADVBENCH, p, harmful=True) for p in answers]
    judge = FakeJudge({"q0": 0.9, "q3": 0.2})
    ctx, drops = _ctx(tmp_path, AnswerFilter.JUDGE, answers, judge)
    kept = answer_prompts(SourceName.GENERATED_HARMFUL, prompts, ctx, is_harmful=True)
    assert [r.instruction for r in kept] == ["q0"] and drops == {DECLINED: 3, NOT_HARMFUL: 1}
    # reading back without generator: the judge is not asked again
    ctx, drops = _ctx(tmp_path, AnswerFilter.JUDGE, answers, FakeJudge({}), generate=False)
    assert [r.instruction for r in answer_prompts(SourceName.GENERATED_HARMFUL, prompts, ctx, is_harmful=True)] == ["q0"]
    # the default keeps the keyword list (runs made before the filter keep their data)
    ctx, drops = _ctx(tmp_path, AnswerFilter.KEYWORD, answers)
    kept = answer_prompts(SourceName.GENERATED_HARMFUL, prompts, ctx, is_harmful=True)
    assert [r.instruction for r in kept] == ["q0", "q1", "q3"] and drops == {DECLINED: 2}
    # benign answers are never judged: the keyword list only
    ctx, drops = _ctx(tmp_path, AnswerFilter.JUDGE, answers, None)
    assert len(answer_prompts(SourceName.BENIGN_PROSE, prompts, ctx, is_harmful=False)) == 3


def test_the_judge_filter_needs_a_judge_and_the_old_default_keeps_run_keys(tmp_path):
    from antibody.config.compose import to_yaml

    prompts = [fake_record(SourceName.ADVBENCH, "q0", harmful=True)]
    ctx, _ = _ctx(tmp_path, AnswerFilter.JUDGE, dict(PAIRS), None)
    with pytest.raises(DataError, match="harmful_answer_filter=judge: no judge"):
        answer_prompts(SourceName.GENERATED_HARMFUL, prompts, ctx, is_harmful=True)
    # the judge is the default since 2026-12 and is written out; the keyword filter, what runs
    # did before, is not, so their keys stay
    assert "harmful_answer_filter: judge" in to_yaml(compose(["experiment=tiny"]))
    assert "harmful_answer_filter" not in to_yaml(compose(["experiment=tiny", "data.harmful_answer_filter=keyword"]))


def test_the_application_hands_the_evaluations_judge_to_the_data_build_only_when_asked():
    from antibody.app.stages import LazyAnswerJudge, split_inputs

    assert split_inputs(compose(["experiment=tiny", "data.harmful_answer_filter=keyword"]))["answer_judge"] is None
    judge = split_inputs(compose(["experiment=tiny", "data.harmful_answer_filter=judge", "eval.judge=keyword",
                                  "eval.judge_threshold=0.4"]))["answer_judge"]
    assert isinstance(judge, LazyAnswerJudge) and judge.threshold == 0.4 and judge._judge is None  # not built yet
    assert judge.version.startswith("keyword:")
    assert judge.scores(["q", "q"], ["Sure: step 1 ...", "I cannot help with that."]) == [1.0, 0.0]
