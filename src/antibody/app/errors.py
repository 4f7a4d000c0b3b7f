"""Which exceptions are expected user errors: reported in one line, exit code 2."""

from __future__ import annotations

import sys

from antibody.config.errors import ConfigError, DataError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


class StageInterrupted(RuntimeError):
    """Training stopped before max_steps (Lightning turns Ctrl-C into a clean stop); the
    run directory keeps its last checkpoint, so rerunning the command resumes it."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """ConfigError, DataError and, once antibody.models is loaded, ModelError.

    ModelError is looked up rather than imported: importing antibody.models loads torch
    and transformers (seconds), which `--help` and config errors must not wait for; and a
    ModelError can only have been raised after its module was imported.
    """
    types: list[type[BaseException]] = [ConfigError, DataError]
    models_errors = sys.modules.get("antibody.models.errors")
    if models_errors is not None:
        types.append(models_errors.ModelError)
    return tuple(types)
