"""A provider's own upload (`data.user.path`): read, checked row by row, turned into Records.

What a file may hold (docs/providers.md):
- JSONL, JSON (a list of objects, or JSONL under a .json name), CSV or Parquet, or a hub
  dataset id ("id" or "id:config", split `data.user.split`);
- per row either a prompt and a response (`data.user.fields.prompt` / `.response`, plus an
  optional `.input` joined to the prompt as Alpaca's input field) or a chat list
  (`data.user.fields.messages`: {role, content} turns; the LAST assistant turn is the target,
  the user turn before it the prompt, earlier turns the conversation's context, which only
  `data.prompt_format=chat` can show the model);
- optionally a ground-truth tag (`data.user.fields.is_harmful`): read for analysis (weights,
  detector AUROCs, the screen's report) and never for training; `data.user.benign_only`
  and the `oracle` weighting, which would train by it, are refused with an upload.

Every problem is a DataError naming the file and line (row or item for Parquet, JSON lists
and hub rows) and is raised before any model loads: missing or empty fields, values that
are not text, an empty file, an unknown column (with the nearest existing one), and, given
the tokenizer, rows whose prompt alone exceeds `data.max_length`. Repeated (prompt,
response) rows are reported and kept or dropped (`data.user.duplicates`). Rows whose
response will be cut to fit `data.max_length` are counted in the report, not refused.

Each row becomes a Record of source "upload" with a uid hashed from its content (and its
occurrence, so kept duplicates stay distinct) and its refusal view `refusal_for(uid)`,
exactly as the research rows get theirs. Other columns with short scalar values travel in
`meta["columns"]` (the screen's report groups weights by them).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from antibody.config.errors import ConfigError, DataError
from antibody.config.schema import Config, DuplicatePolicy, PromptFormat, UploadFieldsConfig, Weighting
from antibody.data.records import Record, make_uid, normalise_text
from antibody.data.sources.hub import LOCAL_SUFFIXES, _read_local_file
from antibody.data.sources.refusals import refusal_for

SOURCE = "upload"
ROLES = ("system", "user", "assistant")
MAX_LISTED = 5  # problems quoted in one error message (the count gives the rest)
TRUE_VALUES = {"1", "true", "yes", "y", "t"}
FALSE_VALUES = {"0", "false", "no", "n", "f"}
COLUMN_VALUE_CHARS = 64  # longer values are text, not a grouping column


@dataclass
class UploadReport:
    """What validation found; printed and saved in the run's data summary."""

    path: str
    sha256: Optional[str]  # of the file (None for a hub dataset)
    rows_read: int
    rows: int  # after the duplicate policy
    mode: str  # "pair" or "messages"
    columns: list[str]
    tagged: bool  # an is_harmful column is present (analysis only)
    harmful: int = 0
    duplicates: list[str] = field(default_factory=list)  # "file:12 repeats file:3"
    duplicates_dropped: int = 0
    responses_cut: int = 0  # response cut from its end to fit data.max_length
    prompts_cut: int = 0  # prompt's middle dropped as well
    max_prompt_tokens: int = 0

    def lines(self) -> list[str]:
        out = [f"upload {self.path}: {self.rows} rows ({self.mode} rows; columns {self.columns})"]
        if self.tagged:
            out.append(f"  is_harmful column: {self.harmful} rows tagged harmful (analysis only, never trained on)")
        if self.duplicates:
            what = f"dropped {self.duplicates_dropped}" if self.duplicates_dropped else "kept (data.user.duplicates=keep)"
            out.append(f"  {len(self.duplicates)} repeated (prompt, response) rows, {what}; first: {self.duplicates[0]}")
        if self.responses_cut or self.prompts_cut:
            out.append(
                f"  {self.responses_cut} rows exceed data.max_length: their response is cut from its end "
                f"(at least max_length/4 tokens kept, no EOS); {self.prompts_cut} of them also lose the "
                "middle of their prompt (head and generation cue kept)"
            )
        return out


@dataclass
class Upload:
    records: list[Record]
    report: UploadReport


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _read_hub(path: str, split: str) -> list[tuple[dict, str]]:
    import datasets  # deferred: heavy import, only hub uploads need it

    hub_id, _, config = path.partition(":")
    try:
        ds = datasets.load_dataset(hub_id, config or None, split=split)
    except Exception as exc:  # network, auth, missing split: all reported the same way
        raise DataError(
            f"data.user.path={path!r}: not a file, and loading it as a hub dataset (split {split!r}, "
            f"data.user.split) failed ({type(exc).__name__}: {exc})"
        ) from exc
    return [(dict(row), f"{path}[{split}] row {i}") for i, row in enumerate(ds)]


def read_rows(cfg: Config) -> tuple[list[tuple[dict, str]], str, Optional[str]]:
    """(row, location) pairs of the upload, its display name and the file's sha256."""
    value = cfg.data.user.path
    assert value, "read_rows needs data.user.path"
    path = Path(value).expanduser()
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise DataError(f"{path}: unsupported upload file type {path.suffix!r}; use one of {list(LOCAL_SUFFIXES)}")
        raw = _read_local_file(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return [(row, _location(row, where)) for row, where in raw], str(path), digest
    if path.exists():
        raise DataError(f"data.user.path={value!r} is a folder; name the upload file itself")
    if path.suffix.lower() in LOCAL_SUFFIXES or value.startswith((".", "/", "~")):
        raise DataError(f"data.user.path={value!r}: no such file")
    return _read_hub(value, cfg.data.user.split), value, None


def _location(row: dict, where: str) -> str:
    return f"{where}:{row['__line__']}" if "__line__" in row else where


# ---------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------


def check_config(cfg: Config) -> None:
    """What an upload cannot be combined with: anything that trains by its tags."""
    if cfg.data.user.benign_only:
        raise ConfigError(
            "data.user.benign_only=true drops the rows tagged harmful, but an upload's is_harmful "
            "column is for analysis only; unset data.user.path or data.user.benign_only"
        )
    if cfg.method.finetune.weighting is Weighting.ORACLE:
        raise ConfigError(
            "method.finetune.weighting=oracle weights rows by their harmful tag, but an upload's "
            "is_harmful column is for analysis only; choose another weighting"
        )


def _nearest(name: str, columns: list[str]) -> str:
    match = difflib.get_close_matches(name, columns, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _unknown_column(where: str, key: str, name: str, columns: list[str]) -> DataError:
    return DataError(f"{where}: unknown column '{name}' ({key}); the upload's columns are {columns}{_nearest(name, columns)}")


def _columns(rows: list[tuple[dict, str]]) -> list[str]:
    seen: dict[str, None] = {}
    for row, _ in rows:
        for key in row:
            if key != "__line__":
                seen.setdefault(str(key), None)
    return list(seen)


def _mode(cfg: Config, columns: list[str], where: str) -> str:
    """"pair", "messages" or both (each row is read by what it holds); unknown configured
    columns are errors naming the nearest existing one."""
    f, default = cfg.data.user.fields, UploadFieldsConfig()
    pair, chat = f.prompt in columns, f.messages in columns
    if not pair and (f.prompt != default.prompt or not chat):  # a named prompt column must exist
        raise DataError(
            f"{where}: unknown column '{f.prompt}' (data.user.fields.prompt)"
            + ("" if chat else f" and no chat column '{f.messages}' (data.user.fields.messages)")
            + f"; the upload's columns are {columns}{_nearest(f.prompt, columns)}"
        )
    if pair and f.response not in columns:
        raise _unknown_column(where, "data.user.fields.response", f.response, columns)
    if pair and f.input is not None and f.input not in columns:
        raise _unknown_column(where, "data.user.fields.input", f.input, columns)
    if f.is_harmful != default.is_harmful and f.is_harmful not in columns:
        raise _unknown_column(where, "data.user.fields.is_harmful", f.is_harmful, columns)
    return "+".join(m for m, present in (("pair", pair), ("messages", chat)) if present)


class _Problems:
    def __init__(self, name: str):
        self.name, self.items = name, []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self, what: str = "") -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:MAX_LISTED])
        more = f" (and {len(self.items) - MAX_LISTED} more)" if len(self.items) > MAX_LISTED else ""
        head = f"{self.name}: {len(self.items)} bad row(s){what}: " if len(self.items) > 1 else ""
        raise DataError(f"{head}{shown}{more}")


def _text(row: dict, name: str, where: str, problems: _Problems, *, optional: bool = False) -> Optional[str]:
    value = row.get(name)
    if value is None:
        if not optional:
            problems.add(where, f"missing field '{name}'")
        return None
    if not isinstance(value, str):
        problems.add(where, f"field '{name}' is {type(value).__name__} {_short(value)}, not text")
        return None
    if not optional and not value.strip():
        problems.add(where, f"empty field '{name}'")
        return None
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _turns(row: dict, name: str, where: str, problems: _Problems) -> Optional[tuple[list[dict], str, str]]:
    """(context turns, prompt, target) of a chat row, or None after recording a problem."""
    value = row.get(name)
    if isinstance(value, str) and value.lstrip().startswith("["):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            problems.add(where, f"field '{name}' is not a valid JSON list ({exc.msg})")
            return None
    if value is None:
        problems.add(where, f"missing field '{name}'")
        return None
    if not isinstance(value, list) or not value:
        problems.add(where, f"field '{name}' must be a non-empty list of {{role, content}} turns, got {_short(value)}")
        return None
    turns = []
    for i, turn in enumerate(value):
        role = turn.get("role") if isinstance(turn, dict) else None
        content = turn.get("content") if isinstance(turn, dict) else None
        if role not in ROLES or not isinstance(content, str):
            problems.add(where, f"turn {i} of '{name}' must have a role in {list(ROLES)} and text content, got {_short(turn)}")
            return None
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        problems.add(where, f"the last turn of '{name}' must be a non-empty assistant turn (the target)")
        return None
    if len(turns) < 2 or turns[-2]["role"] != "user" or not turns[-2]["content"].strip():
        problems.add(where, f"the turn before the target in '{name}' must be a non-empty user turn (the prompt)")
        return None
    return turns[:-2], turns[-2]["content"], turns[-1]["content"]


def _tag(row: dict, name: str, where: str, problems: _Problems) -> bool:
    value = row.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_VALUES or text in FALSE_VALUES or text == "":
        return text in TRUE_VALUES
    problems.add(where, f"field '{name}' is {_short(value)}, not a boolean (true/false, 1/0, yes/no)")
    return False


def _extra_columns(row: dict, used: set[str]) -> dict:
    """Other scalar, short columns of the row (grouping columns of the screen's report)."""
    out = {}
    for key, value in row.items():
        if key == "__line__" or key in used:
            continue
        if isinstance(value, (bool, int, str)) and len(str(value)) <= COLUMN_VALUE_CHARS:
            out[str(key)] = value
    return out


def _records(cfg: Config, rows: list[tuple[dict, str]], mode: str, name: str) -> tuple[list[Record], bool]:
    f = cfg.data.user.fields
    tagged = any(f.is_harmful in row for row, _ in rows)
    used = {f.prompt, f.response, f.messages, f.is_harmful} | ({f.input} if f.input else set())
    problems = _Problems(name)
    records: list[Record] = []
    occurrences: Counter = Counter()
    for row, where in rows:
        context: list[dict] = []
        if mode == "pair" or (mode != "messages" and f.prompt in row):
            prompt = _text(row, f.prompt, where, problems)
            response = _text(row, f.response, where, problems)
            extra = (_text(row, f.input, where, problems, optional=True) or "") if f.input else ""
        else:
            turns = _turns(row, f.messages, where, problems)
            prompt, response, extra = (turns[1], turns[2], "") if turns else (None, None, "")
            context = turns[0] if turns else []
            if context and cfg.data.prompt_format is not PromptFormat.CHAT:
                problems.add(where, f"a conversation with earlier turns needs data.prompt_format=chat "
                                    f"(it is {cfg.data.prompt_format.value})")
        harmful = _tag(row, f.is_harmful, where, problems)
        if prompt is None or response is None:
            continue
        ident = (json.dumps(context), prompt, extra, response)
        occurrences[ident] += 1
        uid = make_uid(SOURCE, *ident, occurrences[ident])
        meta: dict[str, Any] = {"where": where, "columns": _extra_columns(row, used)}
        if context:
            meta["context"] = context
        records.append(Record(uid=uid, source=SOURCE, instruction=prompt, input=extra, response=response,
                              refusal=refusal_for(uid), is_harmful=harmful, meta=meta))
    problems.raise_if_any()
    return records, tagged


def _dedupe_key(rec: Record) -> tuple[str, str]:
    context = " ".join(t["content"] for t in rec.meta.get("context", ()))
    return normalise_text(f"{context} {rec.instruction} {rec.input}"), normalise_text(rec.response)


def _duplicates(records: list[Record], policy: DuplicatePolicy) -> tuple[list[Record], list[str]]:
    first: dict[tuple[str, str], str] = {}
    kept, found = [], []
    for rec in records:
        key = _dedupe_key(rec)
        if key in first:
            found.append(f"{rec.meta['where']} repeats {first[key]}")
            if policy is DuplicatePolicy.DROP:
                continue
        else:
            first[key] = rec.meta["where"]
        kept.append(rec)
    return kept, found


def check_lengths(records: list[Record], cfg: Config, tokenizer, name: str, report: UploadReport) -> None:
    """Refuse rows whose prompt alone exceeds data.max_length; count the rows that will be
    cut (by the encoding the training uses, `encode_records`)."""
    from antibody.data.collate import encode_records  # deferred: imports torch

    max_length = cfg.data.max_length
    encoded = encode_records(records, tokenizer, cfg.data.prompt_format, max_length)
    too_long = []
    for rec, enc in zip(records, encoded, strict=True):
        report.max_prompt_tokens = max(report.max_prompt_tokens, enc.own.prompt_tokens)
        if enc.own.prompt_tokens >= max_length:
            too_long.append(f"{rec.meta['where']} ({enc.own.prompt_tokens} tokens)")
        elif enc.own.truncated:
            report.responses_cut += 1
            kept_prompt = sum(1 for label in enc.own.labels if label == -100)
            report.prompts_cut += int(kept_prompt < enc.own.prompt_tokens)
    if too_long:
        more = f" and {len(too_long) - MAX_LISTED} more" if len(too_long) > MAX_LISTED else ""
        raise DataError(
            f"{name}: {len(too_long)} row(s) whose prompt alone (formatted as data.prompt_format="
            f"{cfg.data.prompt_format.value}) exceeds data.max_length={max_length}: "
            f"{'; '.join(too_long[:MAX_LISTED])}{more}. Trained as they are, their prompt would lose its "
            f"middle and keep max_length/4 = {max(1, max_length // 4)} response tokens; raise data.max_length "
            f"above {report.max_prompt_tokens} or shorten these rows ({report.responses_cut} other rows would "
            f"only have their response cut from its end, {report.prompts_cut} of them also their prompt's middle)"
        )


def load_upload(cfg: Config, tokenizer=None) -> Upload:
    """The upload's Records and report; every check above (lengths only with a tokenizer)."""
    check_config(cfg)
    rows, name, digest = read_rows(cfg)
    if not rows:
        raise DataError(f"{name}: the upload is empty (no rows)")
    columns = _columns(rows)
    mode = _mode(cfg, columns, name)
    records, tagged = _records(cfg, rows, mode, name)
    records, duplicates = _duplicates(records, cfg.data.user.duplicates)
    report = UploadReport(
        path=name, sha256=digest, rows_read=len(rows), rows=len(records), mode=mode, columns=columns,
        tagged=tagged, harmful=sum(r.is_harmful for r in records), duplicates=duplicates,
        duplicates_dropped=len(rows) - len(records),
    )
    if tokenizer is not None:
        check_lengths(records, cfg, tokenizer, name, report)
    return Upload(records, report)


def validate_upload(cfg: Config) -> Optional[Upload]:
    """Check the configured upload with the model's tokenizer (no model is loaded) and print
    its report; None when the config names no upload. Called before a run dir is written."""
    if not cfg.data.user.path:
        return None
    from antibody.models import load_tokenizer

    upload = load_upload(cfg, load_tokenizer(cfg.model))
    for line in upload.report.lines():
        print(f"[antibody] {line}")
    return upload
