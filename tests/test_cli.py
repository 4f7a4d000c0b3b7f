"""CLI dispatch, error reporting and run-directory safety (no model needed)."""

from __future__ import annotations

import pytest

from antibody.cli.main import main
from antibody.app.rundir import resolve_init_from, run_dir_for
from antibody.config import ConfigError, compose


def test_help_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "data-summary" in capsys.readouterr().out
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


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
