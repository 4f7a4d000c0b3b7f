"""The shared progress display: silent off-terminal, one display for nested steps."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.control import Control

from antibody.infra import progress


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """A console that believes it is a terminal, writing into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=buffer, force_terminal=True, width=100))
    return buffer


def test_off_terminal_bars_do_nothing(capsys):
    assert not progress.enabled()  # pytest captures stdout: not a terminal
    with progress.task("step", total=3) as bar:
        bar.advance()
        bar.update(completed=3, description="done")
    assert capsys.readouterr().out == ""


def test_nested_steps_share_one_display_and_only_the_outer_line_stays(terminal):
    with progress.task("outer step", total=2) as outer:
        display = progress._display.progress
        with progress.task("inner step", total=5) as inner:
            inner.advance(5)
            assert progress._display.progress is display  # no second display
            assert [t.description for t in display.tasks] == ["outer step", "inner step"]
        assert [t.description for t in display.tasks] == ["outer step"]
        outer.advance(2)
    assert progress._display.progress is None
    final = terminal.getvalue().rsplit("outer step", 1)[1]
    assert "2/2" in final and "inner step" not in final


@pytest.mark.parametrize("keep", [True, False])
def test_outer_bar_prints_its_final_line_only_when_kept(terminal, monkeypatch, keep):
    printed = []  # what is printed besides the live display's own cursor controls
    monkeypatch.setattr(progress.console, "print",
                        lambda *a, **k: printed.extend(x for x in a if not isinstance(x, Control)))
    with progress.task("step", total=3, keep=keep) as bar:
        bar.advance(3)
    assert len(printed) == int(keep)  # the live display itself erases its region (transient)
    assert progress._display.progress is None


def test_paused_display_hides_new_bars_and_comes_back(terminal):
    with progress.task("demo", total=1):
        display = progress._display.progress
        with progress.paused():
            assert not progress.enabled() and not display.live.is_started
            with progress.task("hidden") as bar:
                bar.advance()
            assert [t.description for t in display.tasks] == ["demo"]
        assert display.live.is_started
