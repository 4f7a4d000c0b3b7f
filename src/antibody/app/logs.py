"""Logging and warning set-up of a command, done once by `antibody.cli.main.main`.

Our own `log.info` messages (model conversion, cache waits, data generation, progress, job
summaries) are shown; the libraries' unrequested notices are not. Each silenced notice is
named exactly below, so a new warning from the same library still reaches the user.

On a terminal, messages go through rich and progress shows as bars; anywhere else (a batch
job's log file, a pipe, CI) every message is one plain line, `time level message`, never
wrapped, and progress comes as lines (antibody.infra.progress). A message logged with
`extra=ONCE` is shown once per process (a cache reused by every job of a study), and once
in each run dir's log. A run dir
keeps the same plain lines in its own log.txt (`run_log`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.logging import RichHandler

from antibody.infra import progress

# Lightning's INFO notices on every run: "GPU available: ..., used: ...", "TPU available",
# the "💡 Tip: ... litlogger / litmodels" adverts, "Seed set to 42", "`Trainer.fit`
# stopped: `max_steps=N` reached", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES". These loggers
# emit nothing else at INFO that a run needs; their warnings still show. Child loggers,
# because Lightning resets `lightning.pytorch` / `lightning.fabric` to INFO on import.
QUIET_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.utilities.rank_zero",
    "lightning.fabric.utilities.seed",
)

# bitsandbytes logs this WARNING when it is imported on a CPU with AVX512-BF16 and the
# optional `kernels` package is absent; it then uses its built-in CPU kernel (QLoRA is a
# GPU path here anyway), so there is nothing for the user to do.
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"

# The `kernels` package (pulled in by bitsandbytes) logs this WARNING on every import under
# HF_HUB_OFFLINE=1, which our tests and CI always set: no kernel is fetched offline either
# way, and the embedded default never uses one.
KERNELS_LOGGER = "kernels._internals.hf_hub"
KERNELS_OFFLINE_MESSAGE = "Skipping publisher trust check"

# Warnings raised inside libraries by calls we do not make (fixing them means upgrading
# the library; pinned in pyproject.toml) or about a choice we made on purpose:
IGNORED_WARNINGS = (
    # peft's get_peft_model reads the alias transformers 5 deprecated
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # Lightning's _pytree builds a LeafSpec, deprecated by torch 2.13
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # Lightning explains at length (with a code example) that a ModelCheckpoint under
    # manual optimisation saves the state after the optimiser step: that is what our
    # stage modules want (a resumed run continues after the saved step)
    (r"Using ModelCheckpoint with manual optimization", UserWarning),
)

_HANDLER_NAME = "antibody-console"
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _OncePerProcess(logging.Filter):
    """Drops a message marked ONCE that this process has already logged."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "once", False):
            return True
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


class _ConsoleHandler(logging.Handler):
    """stderr as it is when a record is emitted (a test harness swaps it): rich on a terminal,
    where progress shows as bars instead of lines; one plain line per message elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.rich = RichHandler(console=progress.console, show_path=False)
        self.plain = logging.Formatter(PLAIN_FORMAT, DATE_FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        if progress.console.is_terminal:
            if not record.name.startswith(progress.log.name):
                self.rich.handle(record)
            return
        try:
            sys.stderr.write(self.plain.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """Append every `antibody` message (progress lines too) to `path`, plain, while the block
    runs: a run dir's log.txt."""
    logger = logging.getLogger("antibody")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT, DATE_FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(_OncePerProcess())  # once per run dir
    logger.addHandler(handler)
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:  # a library user who set up no logging still gets the file
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _no_library_bars() -> None:
    """Off a terminal, the hub's and transformers' tqdm bars ("Loading weights: 0%|...") are a
    carriage-return-joined line of escape codes in a log file: turned off. The variable is read
    when huggingface_hub is imported (transformers reads it from there), which a command does
    after this; a library already imported is told directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def configure_logging() -> None:
    """Show `antibody.*` INFO messages on stderr (so a command's printed output can be
    redirected on its own): through rich on the progress bars' console on a terminal (a line
    logged while bars show lands above them), as plain lines elsewhere; silence the known
    notices. Idempotent."""
    logger = logging.getLogger("antibody")
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.set_name(_HANDLER_NAME)
        # on the handler: a logger's filters never see its children's records
        handler.addFilter(_OncePerProcess())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # an application that also logs to root would print each line twice

    if not progress.console.is_terminal:
        _no_library_bars()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, message in ((BNB_LOGGER, BNB_KERNELS_MESSAGE), (KERNELS_LOGGER, KERNELS_OFFLINE_MESSAGE)):
        noisy = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) for f in noisy.filters):
            noisy.addFilter(_DropMessage(message))
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
