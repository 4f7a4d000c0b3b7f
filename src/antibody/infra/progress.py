"""Progress of long steps (model-written data, evaluation, judge training, training, study
cells), as rich bars on a terminal and as log lines everywhere.

Every bar of a process shares one live display: a step that runs inside another (an
evaluation inside the demo) adds its bar under the outer one, because two displays drawn
at once overwrite each other's lines. Bars are drawn only on a terminal.

Every step also reports through the `antibody.progress` logger: a line when it starts, one
every ANTIBODY_PROGRESS_STEPS units or ANTIBODY_PROGRESS_SECONDS seconds, whichever comes
first (defaults: a tenth of the total, 60 s; 0 turns a criterion off), with done/total,
rate and ETA, and one when it ends. A batch job's log (stderr to a file, SLURM, CI) gets
these lines instead of bars; a run dir's log.txt gets them always (antibody.app.logs).
Without a configured handler (library use, tests) they go nowhere.

Bars and log lines (antibody.app.logs) share `console`, on stderr: a rich console writes
past another one's live display, so only lines printed through the display's own console
land above the bars instead of over them; and stdout stays free for a command's output.

    with task("eval harmful", total=len(records)) as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
"""

from __future__ import annotations

import logging
import os
import sys
import time
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


log = logging.getLogger("antibody.progress")
# `log.info(..., extra=ONCE)`: a message that repeats per job without news (a cache reused),
# shown once per process and once per run log (antibody.app.logs)
ONCE = {"once": True}


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return default if value is None or value == "" else float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number (0 turns it off)") from None


def duration(seconds: float) -> str:
    """`1h02m03s`, `4m05s`, `6s`: an elapsed time or ETA in a log line."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Lines:
    """A step's progress as log lines: a start line, a line every `every_steps` units done or
    every `every_seconds` seconds (whichever first), and an end line."""

    def __init__(self, description: str, total: Optional[float] = None, completed: float = 0):
        self.description = description
        self.total = total
        self.completed = completed
        self._start_done = completed  # units done before this process (a resumed step)
        self.every_seconds = _setting("ANTIBODY_PROGRESS_SECONDS", 60.0)
        default_steps = max(1.0, total / 10) if total else 0.0
        self.every_steps = _setting("ANTIBODY_PROGRESS_STEPS", default_steps)
        self._t0 = self._last_t = time.monotonic()
        self._last_done = completed
        self.note = ""
        log.info("start: %s%s", description, f" ({self._count()})" if total else "")

    def _count(self) -> str:
        done = f"{self.completed:g}"
        if not self.total:
            return done
        return f"{done}/{self.total:g}, {100 * self.completed / self.total:.0f}%"

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self._t0
        new = self.completed - self._start_done
        rate = new / elapsed if elapsed > 0 else 0.0
        parts = [self._count(), f"{duration(elapsed)} elapsed"]
        if new > 0 and elapsed > 0:
            parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each")
            if self.total and not final:
                parts.append(f"ETA {duration((self.total - self.completed) / rate)}")
        if self.note:
            parts.append(self.note)
        return f"{'done' if final else 'progress'}: {self.description}: {', '.join(parts)}"

    def report(self) -> None:
        if self.total and self.completed >= self.total:
            return  # the end line follows
        now = time.monotonic()
        by_steps = self.every_steps and self.completed - self._last_done >= self.every_steps
        by_time = self.every_seconds and now - self._last_t >= self.every_seconds
        if by_steps or by_time:
            log.info(self.line())
            self._last_t, self._last_done = now, self.completed

    def finish(self) -> None:
        log.info(self.line(final=True))


class Bar:
    """One step's progress: its log lines, and a bar when a display is drawn (on a terminal,
    not paused)."""

    def __init__(self, progress: Optional[Progress] = None, task_id: Optional[TaskID] = None,
                 lines: Optional[Lines] = None):
        self._progress = progress
        self._task_id = task_id
        self._lines = lines

    def advance(self, n: float = 1) -> None:
        if self._progress is not None and self._task_id is not None:
            self._progress.advance(self._task_id, n)
        if self._lines is not None:
            self._lines.completed += n
            self._lines.report()

    def update(self, *, completed: Optional[float] = None, total: Optional[float] = None,
               description: Optional[str] = None, note: Optional[str] = None) -> None:
        """None leaves a field as it is; `note` (e.g. the loss) goes on the log lines only."""
        if self._progress is not None and self._task_id is not None:
            self._progress.update(self._task_id, completed=completed, total=total, description=description)
        if self._lines is not None:
            lines = self._lines
            if total is not None:
                lines.total = total
            if note is not None:
                lines.note = note
            if description is not None and description != lines.description:
                lines.description = description
                log.info("%s", lines.line())  # a new sub-step (e.g. a study's next job) is news
                lines._last_t, lines._last_done = time.monotonic(), lines.completed
            if completed is not None:
                lines.completed = completed
                lines.report()


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
    lines = Lines(description, total)
    finished = False
    if not enabled():
        try:
            yield Bar(lines=lines)
            finished = True
        finally:
            if finished:
                lines.finish()
        return
    outermost = _display.progress is None
    if outermost:
        _display.progress = _new_progress()
        _display.progress.start()
    progress = _display.progress
    task_id = progress.add_task(description, total=total)
    try:
        yield Bar(progress, task_id, lines)
        finished = True
        lines.finish()
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
