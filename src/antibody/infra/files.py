"""Crash-safe file writes, JSONL appends and YAML reads whose errors name file:line.

Whole-file writes (text, JSON, JSONL, pickle) go through ``atomic_write``: the content is
written to a temporary file in the target's folder (``os.replace`` is atomic only within
one file system) and renamed over the target, so a reader or a killed process sees the
old file or the complete new one, never half of one. The temporary file is removed on any
error, including KeyboardInterrupt.

One fsync policy for every write: the data is flushed and fsynced before the rename (an
append, before returning), so a power loss cannot publish an empty or torn file under the
final name. The folder is not fsynced: a rename lost that way leaves the old file, which is
still whole.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import yaml

from antibody.errors import ConfigError

JSON_INDENT = 2


def atomic_write(path: Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """Create or replace ``path`` with what ``write(fh)`` writes to an open temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # hidden name + .tmp suffix: globs for the real files (*.json, *.jsonl, *.pkl) skip it
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_json(path: Path, obj: Any, *, ensure_ascii: bool = False,
                      default: Callable[[Any], Any] | None = None) -> None:
    """Indented JSON with a final newline. ``ensure_ascii``/``default`` as in ``json.dump``:
    callers keep the choices their files were always written with."""

    def write(fh: IO) -> None:
        json.dump(obj, fh, indent=JSON_INDENT, ensure_ascii=ensure_ascii, default=default)
        fh.write("\n")

    atomic_write(path, write)


def _jsonl_line(record: Any, ensure_ascii: bool) -> str:
    return json.dumps(record, ensure_ascii=ensure_ascii) + "\n"


def atomic_write_jsonl(path: Path, records: Iterable[Any], *, ensure_ascii: bool = False) -> None:
    """One JSON document per line, the whole file replaced at once."""

    def write(fh: IO) -> None:
        for record in records:
            fh.write(_jsonl_line(record, ensure_ascii))

    atomic_write(path, write)


def atomic_write_pickle(path: Path, obj: Any) -> None:
    atomic_write(path, lambda fh: pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL), binary=True)


def append_jsonl(path: Path, records: Iterable[Any], *, ensure_ascii: bool = False) -> None:
    """Append one line per record. All lines are serialised before anything is written, so
    a record that cannot be serialised adds nothing; only a kill during the write can leave
    a partial last line (no newline), which readers of append-only files must drop."""
    text = "".join(_jsonl_line(record, ensure_ascii) for record in records)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# libyaml's loader when PyYAML was built with it: AdvBench's 520-seed file parses in 0.05 s
# instead of 0.65 s (measured), and every DataModule build reads it
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str, source: Path | str, *, error: type[Exception] = ConfigError) -> Any:
    """``yaml.safe_load(text)``; a syntax error raises ``error`` naming ``source:line``."""
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506  (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"{where}: invalid YAML: {problem}") from None


def read_yaml(path: Path, *, error: type[Exception] = ConfigError) -> Any:
    """The YAML document in ``path`` (None when empty); errors name the file (and line).
    ``error`` lets data readers raise DataError for a bad data file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    return parse_yaml(text, path, error=error)
