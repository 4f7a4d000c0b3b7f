"""CLI dispatch, error reporting and run-directory safety (no model needed)."""

from __future__ import annotations

import logging
import re

import pytest
from rich.logging import RichHandler

from antibody.app.logs import (
    BNB_KERNELS_MESSAGE,
    BNB_LOGGER,
    KERNELS_LOGGER,
    KERNELS_OFFLINE_MESSAGE,
    configure_logging,
)
from antibody.app.rundir import resolve_init_from, run_dir_for
from antibody.cli.main import COMMANDS, Command, main
from antibody.config import ConfigError, compose


def test_help_lists_exactly_the_commands_the_parser_accepts(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    # the command list of --help is written by hand in build_parser, apart from the
    # subparsers: read its lines back (name, then summary) rather than searching the
    # whole text, where "eval" is found inside "judge-eval" and "align" in the prose
    section = out.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    listed = [line.split(maxsplit=1) for line in section.splitlines()]
    assert [name for name, _ in listed] == [c.value for c in Command]
    assert [summary for _, summary in listed] == [COMMANDS[c].summary for c in Command]
    # argparse names the commands it accepts when it refuses one: the same list
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'trian'" in err
    accepted = re.search(r"\(choose from (.*)\)", err).group(1)
    assert [name.strip("' ") for name in accepted.split(",")] == [name for name, _ in listed]


# each command's usage line as a user reads it: its own arguments, no other command's
DEFAULT_ARGS = "[key=value ...]"
USAGE_ARGS = {
    Command.EVAL: "[run=<path>|key=value ...]",
    Command.JUDGE_EVAL: "[judges=a,b|answer_tokens=N|full|key=value ...]",
    Command.DEMO: "[suite=main|controls|baselines|key=value ...]",
    Command.BENCH: "[steps=N|warmup=N|repeats=N|methods=a,b|memory=true|false|precisions=a,b|key=value ...]",
    Command.REPORT: "results.json [PAGE | -]",
    Command.STUDY: "...",  # argparse shows a REMAINDER argument as "..."
    Command.SCREEN: "[<upload> run=<aligned run>|out=<dir>|draws=N|seed=N|batch=N|into=<file>|block=<name>|key=value ...]",
    Command.MERGE_CHECK: "[run=<run>|n=N|key=value ...]",
}


@pytest.mark.parametrize("command", list(Command))
def test_each_command_help_shows_its_own_description_and_options(command, capsys):
    assert main([command.value, "--help"]) == 0
    out = capsys.readouterr().out
    usage = " ".join(out.split("\n\n")[0].split())  # argparse wraps a long usage line
    assert usage == f"usage: python -m antibody {command.value} [-h] {USAGE_ARGS.get(command, DEFAULT_ARGS)}"
    assert " ".join(COMMANDS[command].description.split()[:4]) in " ".join(out.split())
    assert f"python -m antibody {command.value}" in out.split("examples:")[1]


def test_model_error_is_one_line_without_traceback(tmp_path, capsys):
    # an existing folder that holds no model: the tokenizer load fails with a ModelError
    args = ["data-summary", "experiment=tiny", "model.source=hub", f"model.path={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model.path='{tmp_path}'") and err.count("\n") == 1
    assert "Traceback" not in err


def test_logging_is_configured_once_and_known_noise_is_dropped():
    configure_logging()
    configure_logging()
    handlers = logging.getLogger("antibody").handlers
    assert sum(h.get_name() == "antibody-console" for h in handlers) == 1
    assert isinstance(handlers[0].rich, RichHandler)  # what a terminal gets
    assert logging.getLogger("antibody").isEnabledFor(logging.INFO)
    assert not logging.getLogger("lightning.pytorch.utilities.rank_zero").isEnabledFor(logging.INFO)
    bnb = logging.getLogger(BNB_LOGGER)
    record = bnb.makeRecord(BNB_LOGGER, logging.WARNING, __file__, 1,
                            BNB_KERNELS_MESSAGE + ": %s. Please make sure ...", ("No module named 'kernels'",), None)
    assert not bnb.filter(record)
    other = bnb.makeRecord(BNB_LOGGER, logging.WARNING, __file__, 1, "another warning", (), None)
    assert bnb.filter(other)
    kernels = logging.getLogger(KERNELS_LOGGER)
    offline = kernels.makeRecord(KERNELS_LOGGER, logging.WARNING, __file__, 1, KERNELS_OFFLINE_MESSAGE
                                 + " for 'kernels-community/x' because Hugging Face Hub is in offline mode.", (), None)
    assert not kernels.filter(offline)


def test_known_library_warnings_are_silenced_and_others_are_not():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configure_logging()  # adds its filters in front of "always"
        warnings.warn("Using ModelCheckpoint with manual optimization and every_n_train_steps ...", UserWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("a warning nobody silenced", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning nobody silenced"]


def test_bad_key_is_one_clear_line_before_any_work(capsys):
    assert main(["align", "method.align.rho=-1"]) == 2
    err = capsys.readouterr().err
    assert "method.align.rho=-1" in err and "allowed: [0, inf]" in err
    assert "Traceback" not in err


def test_finished_run_is_never_overwritten(tmp_path):
    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}", "run.name=a"])
    run = run_dir_for(cfg, "align")
    (run.path / "precious.txt").write_text("keep")
    run.mark_done("align")
    with pytest.raises(ConfigError, match="already holds a finished align run"):
        run_dir_for(cfg, "align")
    assert (run.path / "precious.txt").read_text() == "keep"


def test_unfinished_run_with_other_config_is_refused(tmp_path):
    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}", "run.name=a"])
    run_dir_for(cfg, "align")
    other = compose(["experiment=tiny", f"run.output_dir={tmp_path}", "run.name=a", "method.align.rho=0.5"])
    with pytest.raises(ConfigError, match="different config"):
        run_dir_for(other, "align")
    run_dir_for(cfg, "align")  # same config: re-opened for resume


def test_a_run_saved_before_a_key_existed_still_matches_its_config(tmp_path):
    """Runs written before a schema key was added resume (and are reused by the demo) when
    the key's default is what they did; a changed value or an unknown key is another config."""
    import yaml

    from antibody.app.rundir import config_matches

    cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}", "run.name=a"])
    run = run_dir_for(cfg, "align")
    saved = yaml.safe_load(run.config_path.read_text())
    del saved["method"]["align"]["vaccine"], saved["method"]["finetune"]["lisa"]
    run.config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert config_matches(run.config_path, cfg)
    run_dir_for(cfg, "align")  # re-opened for resume
    saved["method"]["align"]["rho"] = 0.5
    run.config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert not config_matches(run.config_path, cfg)
    saved["method"]["align"]["rho"] = cfg.method.align.rho
    saved["method"]["align"]["retired_key"] = 1
    run.config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert not config_matches(run.config_path, cfg)
    # how a model is judged is not how it was trained: another judge reuses the trained run
    del saved["method"]["align"]["retired_key"]
    saved["eval"]["judge"] = "tfidf"
    saved["eval"]["max_new_tokens"] = 7
    run.config_path.write_text(yaml.safe_dump(saved, sort_keys=False))
    assert config_matches(run.config_path, cfg)
    assert not config_matches(run.config_path, compose(["experiment=tiny", f"run.output_dir={tmp_path}",
                                                        "run.name=a", "data.user.p=0.3"]))


def test_init_from_latest_and_by_name(tmp_path):
    with pytest.raises(ConfigError, match="no finished align run"):
        resolve_init_from("latest", str(tmp_path))
    for name in ("old", "new"):
        cfg = compose(["experiment=tiny", f"run.output_dir={tmp_path}", f"run.name={name}"])
        run = run_dir_for(cfg, "align")
        run.adapter.mkdir()
        run.mark_done("align")
    import os
    import time

    os.utime(tmp_path / "old" / "DONE", (time.time() - 100, time.time() - 100))
    assert resolve_init_from("latest", str(tmp_path)).name == "new"
    assert resolve_init_from("old", str(tmp_path)).name == "old"
    with pytest.raises(ConfigError, match="no run with an adapter"):
        resolve_init_from("missing", str(tmp_path))


def test_a_commands_own_argument_is_taken_out_of_the_overrides():
    from antibody.app.arguments import pop_arg

    args = ["experiment=tiny", "steps=2", "run.name=x", "steps=3", "steps_per=1"]
    assert pop_arg(args, "steps") == ("3", ["experiment=tiny", "run.name=x", "steps_per=1"])
    assert pop_arg(args, "suite") == (None, args)


def test_every_command_runs_a_function_of_the_application_layer():
    import importlib

    from antibody.cli.main import COMMANDS

    for command, spec in COMMANDS.items():
        module, function = spec.target.split(":")
        assert module.startswith("antibody.app."), command
        assert callable(getattr(importlib.import_module(module), function)), command
