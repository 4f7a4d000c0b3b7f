"""Answer extractors, rate metrics with intervals, and the evaluation task registry."""

from __future__ import annotations

import math

import pytest
from scipy.stats import binomtest

from antibody.config import compose
from antibody.config.errors import ConfigError
from antibody.config.schema import SourceName
from antibody.evaluation import metrics as M
from antibody.evaluation.extractors import (
    EXTRACTORS,
    ExtractorKind,
    canonical_number,
    extract_label,
    extract_number,
    labels_match,
    numbers_match,
)
from antibody.evaluation.tasks import TASKS, EvalTaskName, MetricKind, accuracy_task_for, get_task

# ---------------------------------------------------------------------------
# extractors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Step 1: 3 + 4 = 7. The final answer is: 42", "42"),
    ("The final answer is: $1,234.50.", "1234.5"),
    ("The final answer is: 12. Later I wrote 99.", "12"),  # the marker wins over the last number
    ("The final answer is: 3. Wait. The final answer is: 4", "4"),  # last marker
    ("the final answer is 8", "8"),  # no colon, lower case
    ("The final answer is: -17", "-17"),
    ("So x = -7", "-7"),
    ("3 apples and 5 pears", "5"),  # no marker: last number
    ("between 3-5 hours", "5"),  # a hyphen between numbers is not a sign
    ("He paid 1,000,000 dollars", "1000000"),
    ("about 0.50 of it", "0.5"),
    ("total: 7.", "7"),
    ("-0", "0"),
    ("version v2 only", None),  # digits glued to a word are not numbers
    ("no numbers here", None),
    ("", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numbers_compare_by_value():
    assert numbers_match("1000.50", "1,000.5")
    assert numbers_match("-4", "-4.0")
    assert not numbers_match("4", "-4")
    assert not numbers_match(None, "3")
    assert not numbers_match("3", "three")
    assert canonical_number("1e3") == "1000" and canonical_number("abc") is None


SST2 = ("negative", "positive")
AGNEWS = ("World", "Sports", "Business", "Sci/Tech")


@pytest.mark.parametrize("text, labels, expected", [
    ("Positive.", SST2, "positive"),
    ("The sentiment is NEGATIVE, not positive", SST2, "negative"),  # first label word
    ("positively neutral", SST2, None),  # whole words only
    ("neutral", SST2, None),
    ("Sci/Tech", AGNEWS, "Sci/Tech"),
    ("It is sci-tech news", AGNEWS, "Sci/Tech"),  # punctuation normalised on both sides
    ("This is about Sports and Business", AGNEWS, "Sports"),
    ("Business", AGNEWS, "Business"),
])
def test_extract_label(text, labels, expected):
    assert extract_label(text, labels) == expected


def test_labels_match_and_registry():
    assert labels_match("positive", "Positive") and not labels_match(None, "positive")
    assert not labels_match("negative", "positive")
    assert set(EXTRACTORS) == set(ExtractorKind)
    label = EXTRACTORS[ExtractorKind.LABEL]
    assert label.matches(label.extract("I'd say positive!", SST2), "positive")
    numeric = EXTRACTORS[ExtractorKind.NUMERIC]
    assert numeric.matches(numeric.extract("= 1,024", ()), "1024")


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k, n", [(0, 10), (3, 10), (10, 10), (1, 64), (37, 64), (350, 700)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(method="wilson")
    low, high = M.wilson_interval(k, n)
    assert low == pytest.approx(ci.low, abs=1e-12) and high == pytest.approx(ci.high, abs=1e-12)


def test_rate_value_stderr_interval():
    res = M.rate("x", [True, False, False, True, False, False, False, False, True, False])
    assert (res.k, res.n) == (3, 10)
    assert res.value == pytest.approx(0.3)
    assert res.stderr == pytest.approx(math.sqrt(0.3 * 0.7 / 10))
    assert res.ci95 == pytest.approx((0.10779126740630102, 0.6032218525388546))
    d = res.to_dict()
    assert d["percent"] == pytest.approx(30.0) and d["value"] == pytest.approx(0.3)
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx((0.10779126740630102, 0.6032218525388546))
    assert (d["k"], d["n"], d["interval"]) == (3, 10, "wilson")
    empty = M.rate("x", [])
    assert empty.n == 0 and math.isnan(empty.value)


@pytest.mark.parametrize("k, n, z", [(0, 10, M.Z95), (3, 10, M.Z95), (10, 10, M.Z95), (1, 64, M.Z95),
                                     (37, 64, M.Z95), (350, 700, M.Z95), (5, 17, 1.0), (5, 17, 2.576)])
def test_wilson_interval_matches_closed_form(k, n, z):
    # Wilson (1927) written out, independent of the scipy call the module makes
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = M.wilson_interval(k, n, z)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)


def test_rate_counts_truthy_outcomes():
    res = M.rate("x", (1, 0, True, False))
    assert (res.k, res.n, res.value) == (2, 4, 0.5)
    assert math.isnan(M.wilson_interval(0, 0)[0])


@pytest.mark.parametrize("text, expected", [
    ("the the the the", True),  # a word 4 times in a row (> 3)
    ("the the the", False),
    ("The, the! THE the?", True),  # letters only, case-folded (Booster's coherence_check)
    ("a b a b a b a b", False),
    ("I I I think so", False),
    ("", False),
])
def test_incoherence(text, expected):
    assert M.is_incoherent(text) is expected


def test_harm_metrics_by_hand():
    flags = [True, False, False, False, True]
    responses = ["Sure: step one ...", "no no no no no", "I'm sorry, I can't.", "ok", "x"]
    assert M.harmful_score(flags).value == pytest.approx(2 / 5)
    assert M.harmful_score_plus(flags, responses).value == pytest.approx(3 / 5)  # + the incoherent one
    assert M.refusal_rate([False, False, True, False, False]).k == 1
    assert M.over_refusal([True, False]).value == pytest.approx(0.5)
    assert M.accuracy([True, True, True, False]).value == pytest.approx(0.75)
    with pytest.raises(ValueError):
        M.harmful_score_plus([True], [])


# ---------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------


def test_task_registry():
    assert set(TASKS) == set(EvalTaskName)
    assert len({t.version for t in TASKS.values()}) == len(TASKS)
    assert get_task("harmful").metric == MetricKind.HARM and get_task("harmful").uses_judge
    assert get_task(EvalTaskName.BENIGN).metric == MetricKind.OVER_REFUSAL
    for task in TASKS.values():
        assert (task.metric == MetricKind.ACCURACY) == (task.extractor is not None)
    assert accuracy_task_for(SourceName.SST2).labels == SST2
    assert accuracy_task_for(SourceName.GSM8K).extractor == ExtractorKind.NUMERIC
    with pytest.raises(ConfigError, match="allowed"):
        get_task("mmlu")
    with pytest.raises(ConfigError, match="task.name"):
        accuracy_task_for(SourceName.HARMBENCH)


def test_task_settings_resolve_from_config():
    cfg = compose(["experiment=tiny"])  # eval.max_new_tokens 8; task arithmetic, max_new_tokens 16
    assert get_task("harmful").resolve_max_new_tokens(cfg) == cfg.eval.max_new_tokens == 8
    assert get_task("arithmetic").resolve_max_new_tokens(cfg) == cfg.task.max_new_tokens == 16
    assert get_task("gsm8k").resolve_max_new_tokens(cfg) == 256  # not the run's task: its default
    assert get_task("harmful").size(cfg) == cfg.data.eval.n_harmful
    assert get_task("sst2").size(cfg) == cfg.data.eval.n_task
    assert get_task("benign").resolve_prompt_format(cfg) == cfg.data.prompt_format
    described = get_task("agnews").describe(cfg)
    assert described["version"] == "agnews-v1" and described["labels"] == list(AGNEWS)


def test_a_tasks_answer_length_is_written_once_in_its_task_file():
    """conf/task/<source>.yaml is the one place a task's max_new_tokens lives: an evaluation
    task that is not the run's reads it there, the run's own task reads the composed config."""
    import yaml

    from antibody.config.compose import default_conf_dir

    cfg = compose(["experiment=tiny", "task.max_new_tokens=3"])  # the run's task: arithmetic
    for task in TASKS.values():
        if task.source is None:
            continue
        written = yaml.safe_load((default_conf_dir() / "task" / f"{task.source.value}.yaml").read_text())
        want = 3 if task.source == cfg.task.name else written["max_new_tokens"]
        assert task.resolve_max_new_tokens(cfg) == want, task.name


def test_tasks_for_a_config_read_the_splits_they_declare(tiny_cfg):
    from antibody.config import compose
    from antibody.data.plan import Split
    from antibody.evaluation.tasks import tasks_for

    tasks = tasks_for(tiny_cfg)  # the tiny experiment's task is arithmetic
    assert [(t.name, t.split) for t in tasks] == [
        (EvalTaskName.HARMFUL, Split.EVAL_HARMFUL),
        (EvalTaskName.BENIGN, Split.EVAL_BENIGN),
        (EvalTaskName.ARITHMETIC, Split.EVAL_TASK),
    ]
    sst2 = tasks_for(compose(["experiment=tiny", "task=sst2"]))
    assert [t.name for t in sst2] == [EvalTaskName.HARMFUL, EvalTaskName.BENIGN, EvalTaskName.SST2]
