"""A command's own `name=value` argument among the config overrides it passes on.

`eval run=<path>`, `demo suite=controls` and `bench steps=N` take one argument that is not
a config key; it is taken out here, once, and the rest go to the config composition.
"""

from __future__ import annotations

from typing import Optional


def pop_arg(args: list[str], name: str) -> tuple[Optional[str], list[str]]:
    """(the value of the last `name=...` in `args` or None, the other arguments in order)."""
    prefix = f"{name}="
    value: Optional[str] = None
    rest = []
    for arg in args:
        if arg.startswith(prefix):
            value = arg[len(prefix):]
        else:
            rest.append(arg)
    return value, rest
