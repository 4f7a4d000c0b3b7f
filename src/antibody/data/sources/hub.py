"""Reading hub datasets (`datasets.load_dataset`) or local files in the same schema.

`data.paths[<source>]` names where a hub source comes from:
- a hub id, optionally with a config after a colon ("glue:sst2"); every split of the
  source's spec is loaded and each row is tagged with its role (train / eval);
- an existing local file (.json list or JSONL, .jsonl, .csv, .parquet): its rows get the
  spec's local role;
- an existing folder holding one file per split, named by the hub split or the role
  (e.g. train.jsonl + validation.jsonl, or train.csv + eval.csv).
Unset, the spec's default hub id is used (none for the RepNoise refusal file).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Optional

from antibody.config.errors import DataError
from antibody.config.schema import SourceName
from antibody.data.io import read_csv, read_json, read_jsonl, require_fields
from antibody.data.sources.registry import SourceContext

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


class SplitRole(StrEnum):
    """What a split is for: the task's training pool or its evaluation set."""

    TRAIN = "train"
    EVAL = "eval"


@dataclass(frozen=True)
class HubSpec:
    default_path: Optional[str]  # hub id used when data.paths lacks the source
    splits: tuple[tuple[SplitRole, str], ...]  # (role, hub split name)
    local_role: SplitRole  # role of rows read from a single local file
    config: Optional[str] = None  # hub config name (gsm8k: "main")
    data_files: Optional[dict[str, str]] = None  # split -> file, for hub repos whose loader is a script
    hint: str = ""  # where to get the data, for error messages


@dataclass
class RawRow:
    row: dict
    where: str  # file path (the row carries __line__) or "<id>[<split>] row <i>" / "<file> item <i>"
    role: SplitRole
    split: str

    def location(self) -> str:
        return f"{self.where}:{self.row['__line__']}" if "__line__" in self.row else self.where

    def require(self, names: Iterable[str]) -> None:
        require_fields(self.row, list(names), self.where)


def _read_local_file(path: Path) -> list[tuple[dict, str]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return [(row, str(path)) for row in read_jsonl(path)]
    if suffix == ".json":
        rows = read_json(path)  # a JSON list, or JSONL under a .json name
        return [(row, str(path) if "__line__" in row else f"{path} item {i}") for i, row in enumerate(rows)]
    if suffix == ".csv":
        return [(row, str(path)) for row in read_csv(path)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: unreadable parquet file: {exc}") from None
        return [(row, f"{path} row {i}") for i, row in enumerate(table.to_pylist())]
    raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {list(LOCAL_SUFFIXES)}")


def _read_folder(folder: Path, spec: HubSpec, source: SourceName) -> list[RawRow]:
    out: list[RawRow] = []
    for role, split in spec.splits:
        names = {split, role.value}
        files = sorted(p for p in folder.iterdir() if p.stem in names and p.suffix.lower() in LOCAL_SUFFIXES)
        if len(files) > 1:
            raise DataError(f"{folder}: several files for split {split!r} of {source.value!r}: {[f.name for f in files]}")
        out += [RawRow(row, where, role, files[0].stem) for row, where in _read_local_file(files[0])] if files else []
    if not out:
        expected = sorted({f"{n}{{{','.join(LOCAL_SUFFIXES)}}}" for r, s in spec.splits for n in (s, r.value)})
        raise DataError(f"{folder}: no split files for {source.value!r}; expected one of {expected}")
    return out


def _load_hub(hub_id: str, config: Optional[str], spec: HubSpec, source: SourceName) -> list[RawRow]:
    import datasets  # deferred: heavy import, only real (hub) runs need it

    out: list[RawRow] = []
    for role, split in spec.splits:
        kwargs = {"data_files": spec.data_files} if spec.data_files else {}
        try:
            ds = datasets.load_dataset(hub_id, config, split=split, **kwargs)
        except Exception as exc:  # network, auth, missing split: all reported the same way
            raise DataError(
                f"data.paths.{source.value}={hub_id!r}: could not load split {split!r} from the hub "
                f"({type(exc).__name__}: {exc}). {spec.hint}".strip()
            ) from exc
        where = f"{hub_id}[{split}]"
        out += [RawRow(dict(row), f"{where} row {i}", role, split) for i, row in enumerate(ds)]
    return out


def read_rows(source: SourceName, spec: HubSpec, ctx: SourceContext) -> list[RawRow]:
    """Raw rows of a hub source from the place data.paths names (see the module docstring)."""
    value = ctx.data.paths.get(source.value) or spec.default_path
    if not value:
        raise DataError(f"data.paths.{source.value} is not set: name a local file or hub id. {spec.hint}".strip())
    path = Path(value).expanduser()
    if path.is_file():
        return [RawRow(row, where, spec.local_role, path.stem) for row, where in _read_local_file(path)]
    if path.is_dir():
        return _read_folder(path, spec, source)
    if path.suffix.lower() in LOCAL_SUFFIXES or value.startswith(("/", "./", "../", "~")):
        raise DataError(f"data.paths.{source.value}={value!r}: file not found (cwd {Path.cwd()}). {spec.hint}".strip())
    hub_id, _, config = value.partition(":")
    return _load_hub(hub_id, config or spec.config, spec, source)


def row_meta(raw: RawRow, **extra) -> dict:
    return {"split": raw.role.value, "hub_split": raw.split, **extra}


def parse_bool(value, raw: RawRow, field: str) -> bool:
    """Booleans from JSON/parquet (bool) or CSV ("true"/"false"/"1"/"0")."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise DataError(f"{raw.location()}: field {field!r}={value!r} is not a boolean")


def parse_label(value, raw: RawRow, names: dict[int, str]) -> str:
    """Integer class label -> its name; DataError naming the row and the allowed labels."""
    try:
        label = int(value)
    except (TypeError, ValueError):
        label = None
    if label not in names:
        raise DataError(f"{raw.location()}: label={value!r} is not one of {sorted(names)}")
    return names[label]
