"""Logs of a batch job (output to a pipe, nobody at a terminal): plain one-line messages,
progress as lines during training and generation, a summary line per job, the same lines
in the run dir's log.txt, and repeated cache notices once per process."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from antibody.app import logs
from antibody.infra import progress

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) ")


def _run(args: list[str], cwd: Path) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "COLUMNS": "80",
           "ANTIBODY_PROGRESS_STEPS": "1", "ANTIBODY_PROGRESS_SECONDS": "0"}
    # stdout and stderr are pipes, as in a batch job whose output goes to a file
    done = subprocess.run([sys.executable, "-m", "antibody", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr and "Loading weights" not in done.stderr  # no library progress bars
    return done.stderr.splitlines()


def test_a_piped_align_and_eval_log_progress_summaries_and_keep_a_log_file(tmp_path):
    # a folder name long enough that rich would have broken it over lines at 80 columns
    out = tmp_path / ("a-run-folder-whose-name-is-much-longer-than-a-terminal-line-" * 2 + "end")
    tiny = ["experiment=tiny", "method.align.max_steps=3", f"run.output_dir={out}", "run.name=al"]
    lines = _run(["align", *tiny], tmp_path)
    ours = [line for line in lines if LINE.match(line)]
    assert ours and all("\x1b" not in line for line in lines)  # no terminal control codes
    steps = [line for line in ours if "progress: train al (align): " in line]
    assert [re.search(r"(\d)/3", s).group(1) for s in steps] == ["1", "2"]  # a line per step; the end line says 3/3
    assert any("done: train al (align): 3/3" in line for line in ours)
    assert any("job done: al, stage align, 3 steps" in line and line.endswith(f"s/step: {out / 'al'}") for line in ours)

    run = out / "al"
    lines = _run(["eval", f"run={run}", "eval.max_new_tokens=4", "eval.batch_size=2"], tmp_path)
    assert any("progress: eval harmful: " in line for line in lines)  # generation reports as it goes
    (summary,) = [line for line in lines if "eval done: al: " in line]
    assert re.search(r"HS \d+\.\d%", summary) and re.search(r"FA \d+\.\d%", summary)
    # a long path stays on one line: the summary names the evaluation folder in full
    assert summary.endswith(f": {run / 'eval'}")

    text = (run / "log.txt").read_text().splitlines()
    assert any("job done: al, stage align" in line for line in text)
    assert summary in text and any("progress: train al (align): 1/3" in line for line in text)
    assert all(LINE.match(line) for line in text)


def test_a_notice_marked_once_is_shown_once_per_process(capsys, monkeypatch):
    monkeypatch.setattr(type(progress.console), "is_terminal", property(lambda self: False))
    logs.configure_logging()
    log = logging.getLogger("antibody.test_once")
    for _ in range(3):
        log.info("reusing %s", "/cache/x.jsonl", extra=progress.ONCE)
    log.info("news %d", 1)
    log.info("news %d", 1)
    err = capsys.readouterr().err.splitlines()
    assert sum("reusing /cache/x.jsonl" in line for line in err) == 1
    assert sum("news 1" in line for line in err) == 2  # unmarked messages all show


def test_a_judge_loaded_by_every_job_is_announced_once(capsys, monkeypatch):
    """The bench and a study load the same cached judge for each job: one line, not one each."""
    from antibody.evaluation.judges.trained import announce

    monkeypatch.setattr(type(progress.console), "is_terminal", property(lambda self: False))
    logs.configure_logging()
    report = {"validation_auroc": 0.937, "n_validation": 378, "n_validation_prompts": 207}
    for _ in range(3):
        announce("probe", "v-test-once", False, report)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "judge probe v-test-once" in line]
    assert len(lines) == 1 and "validation AUROC 0.937 (n=378 rows, 207 prompts" in lines[0]
    assert "[judge]" not in captured.out


def test_progress_lines_report_every_n_units_or_seconds(caplog, monkeypatch):
    monkeypatch.setattr(type(progress.console), "is_terminal", property(lambda self: False))
    monkeypatch.setenv("ANTIBODY_PROGRESS_STEPS", "5")
    monkeypatch.setenv("ANTIBODY_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO, logger="antibody.progress"):
        with progress.task("work", total=20) as bar:
            for _ in range(20):
                bar.advance()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "start: work (0/20, 0%)"
    assert [m.split(": ")[2].split(",")[0] for m in messages[1:-1]] == ["5/20", "10/20", "15/20"]
    assert messages[-1].startswith("done: work: 20/20, 100%")
    monkeypatch.setenv("ANTIBODY_PROGRESS_STEPS", "x")
    with pytest.raises(ValueError, match="ANTIBODY_PROGRESS_STEPS='x': expected a number"):
        progress.Lines("bad", total=3)


def test_off_a_terminal_the_libraries_bars_are_turned_off(monkeypatch):
    import huggingface_hub
    import transformers

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        logs._no_library_bars()
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert huggingface_hub.utils.are_progress_bars_disabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()  # "Loading weights: ..." bars
    finally:
        huggingface_hub.utils.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
