"""Readers for JSON, JSONL and CSV files whose errors name the file and line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from antibody.config.errors import DataError


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON line: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            row["__line__"] = lineno
            rows.append(row)
    return rows


def read_json(path: Path) -> list[dict]:
    """A JSON list of objects (the RepNoise/Booster/Antibody files), or JSONL."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped.startswith("["):
        return read_jsonl(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i} is not a JSON object")
        rows.append(row)
    return rows


def read_csv(path: Path, comment: str = "#") -> list[dict]:
    """CSV with leading comment lines skipped; each row keeps its file line number."""
    with open(path, encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].lstrip().startswith(comment):
        start += 1
    reader = csv.reader(io.StringIO("".join(lines[start:])))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty CSV (no header)") from None
    rows = []
    try:
        for rec in reader:
            lineno = start + reader.line_num
            if not rec:
                continue
            if len(rec) != len(header):
                raise DataError(
                    f"{path}:{lineno}: malformed CSV row: {len(rec)} fields, header has {len(header)}"
                )
            row = dict(zip(header, rec, strict=False))
            row["__line__"] = lineno
            rows.append(row)
    except csv.Error as exc:
        raise DataError(f"{path}:{start + reader.line_num}: malformed CSV: {exc}") from None
    return rows


def require_fields(row: dict, names: Iterable[str], path: Path | str) -> None:
    missing = [n for n in names if n not in row or row[n] is None]
    if missing:
        where = f"{path}:{row['__line__']}" if "__line__" in row else str(path)
        raise DataError(f"{where}: missing field(s) {missing}")


def iter_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, line.strip()
