"""Logging and warning set-up of a command, done once by `antibody.cli.main.main`.

Our own `log.info` messages (model conversion, cache waits, data generation) are shown;
the libraries' unrequested notices are not. Each silenced notice is named exactly below,
so a new warning from the same library still reaches the user.
"""

from __future__ import annotations

import logging
import warnings

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

_HANDLER_NAME = "antibody-rich"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def configure_logging() -> None:
    """Show `antibody.*` INFO messages through rich (on stderr, so a command's printed
    output can be redirected on its own; on the progress bars' console, so a line logged
    while bars show lands above them); silence the known notices. Idempotent."""
    logger = logging.getLogger("antibody")
    if not any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        handler = RichHandler(console=progress.console, show_path=False)
        handler.set_name(_HANDLER_NAME)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # an application that also logs to root would print each line twice
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    bnb = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in bnb.filters):
        bnb.addFilter(_DropMessage(BNB_KERNELS_MESSAGE))
    for message, category in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
