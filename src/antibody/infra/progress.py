"""Progress bars for long steps (model-written data, evaluation, judge training), on rich.

Every bar of a process shares one live display: a step that runs inside another (an
evaluation inside the demo) adds its bar under the outer one, because two displays drawn
at once overwrite each other's lines. Bars are drawn only on a terminal; in tests, pipes
and CI logs every helper here does nothing, so the output is exactly what commands print.

Bars and log lines (antibody.app.logs) share `console`, on stderr: a rich console writes
past another one's live display, so only lines printed through the display's own console
land above the bars instead of over them; and stdout stays free for a command's output.

    with task("eval harmful", total=len(records)) as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

# Our own console rather than rich's global one: Lightning's RichProgressBar replaces the
# global console's state when training starts, which would detach a display drawn on it.
console = Console(stderr=True)


class _Display:
    """The one live display of the process (None while no bar is open)."""

    progress: Optional[Progress] = None
    paused: int = 0


_display = _Display()


class Bar:
    """One bar; without a display (off-terminal, or paused) every method does nothing."""

    def __init__(self, progress: Optional[Progress] = None, task_id: Optional[TaskID] = None):
        self._progress = progress
        self._task_id = task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None and self._task_id is not None:
            self._progress.advance(self._task_id, n)

    def update(self, *, completed: Optional[float] = None, total: Optional[float] = None,
               description: Optional[str] = None) -> None:
        if self._progress is not None and self._task_id is not None:  # None leaves a field as it is
            self._progress.update(self._task_id, completed=completed, total=total, description=description)


class _Count(ProgressColumn):
    """"done/total"; a bar without a total shows its count alone (nothing while 0)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        if task.total is None:
            return Text(str(done) if done else "", style="progress.download")
        return Text(f"{done}/{int(task.total)}", style="progress.download")


class _Remaining(TimeRemainingColumn):
    """The time left, only for bars that know their total."""

    def render(self, task: Task) -> Text:
        return Text("") if task.total is None else super().render(task)


def enabled() -> bool:
    """Bars are drawn on an interactive terminal only, and not while paused."""
    return console.is_terminal and not _display.paused


def _new_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        _Remaining(),
        console=console,
        # stdout printed while bars show goes above them when it shares their terminal;
        # redirected into a file, it must stay there
        redirect_stdout=sys.stdout.isatty(),
        # finished bars leave the screen; `task(keep=True)` prints a final line for the
        # outermost one, so nested steps (every evaluation task of every demo job) do not
        # pile up
        transient=True,
    )


@contextmanager
def task(description: str, total: Optional[float] = None, *, keep: bool = True) -> Iterator[Bar]:
    """A bar for one long step; ``total=None`` shows a running count without an end.

    The outermost open bar starts the display and stops it when its step ends; with
    ``keep`` its final state stays on screen as one line (not when the step failed: the
    error is the last word). Bars of steps nested inside it are removed when they end.
    """
    if not enabled():
        yield Bar()
        return
    outermost = _display.progress is None
    if outermost:
        _display.progress = _new_progress()
        _display.progress.start()
    progress = _display.progress
    task_id = progress.add_task(description, total=total)
    finished = False
    try:
        yield Bar(progress, task_id)
        finished = True
    finally:
        if not outermost:
            progress.remove_task(task_id)
        else:
            progress.stop()  # erases the display (transient) ...
            _display.progress = None
            if keep and finished:  # ... then the step's final state is printed as plain output
                done = [t for t in progress.tasks if t.id == task_id]
                progress.console.print(progress.make_tasks_table(done))


@contextmanager
def paused() -> Iterator[None]:
    """Take the display off the screen while another one owns the terminal (Lightning's
    training bar); bars opened meanwhile stay hidden, and the display returns afterwards."""
    progress = _display.progress
    _display.paused += 1
    if progress is not None:
        progress.stop()
    try:
        yield
    finally:
        _display.paused -= 1
        if progress is not None and not _display.paused:
            progress.start()
