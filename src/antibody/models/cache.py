"""A build-once folder cache that is safe under concurrent first use.

Converting the embedded GGUF model takes ~30 s and writes ~517 MB, and several
processes (test workers, sweep agents, two engineers) may ask for it at the same time.
The rules that keep the cache sound:

- A folder is complete only when its marker file exists, and the marker is written
  *inside the temporary folder before* the atomic ``os.rename`` that publishes it, so a
  reader can never see a complete-looking folder that is half written.
- Builders serialise on a lock file next to the target (``filelock``: ``flock`` on POSIX,
  ``msvcrt`` locking on Windows); whoever gets the lock second re-checks and finds the
  work done.
- Temporary folders live in the target's parent (``os.rename`` is atomic only within
  one file system). Leftovers of a crashed builder are never read, and are removed by
  the next builder (it holds the lock, so no live builder can own them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

CACHE_ENV = "ANTIBODY_CACHE"
MARKER = ".antibody-complete.json"


def cache_root() -> Path:
    """``$ANTIBODY_CACHE`` if set, else ``~/.cache/antibody`` (read at each call, so tests can
    point it elsewhere)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "antibody"


def read_marker(target: Path) -> dict[str, Any] | None:
    """The marker's metadata if ``target`` is a complete cache folder, else None."""
    try:
        return json.loads((target / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except json.JSONDecodeError:
        # Cannot happen through build_once (marker written before publishing); treat a
        # hand-damaged marker as incomplete so the folder is rebuilt.
        return None


def is_complete(target: Path, key: dict[str, Any]) -> bool:
    """True when ``target`` was fully built from the source described by ``key``."""
    meta = read_marker(target)
    return meta is not None and meta.get("key") == key


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock held for the block. On POSIX filelock leaves the lock file in place on
    release: deleting it would let two processes lock two different inodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)  # try once, so that a wait is logged
    except Timeout:
        log.info("waiting for another process that is building %s", path.with_suffix(""))
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _remove_leftovers(target: Path) -> None:
    for stale in target.parent.glob(_tmp_prefix(target) + "*"):
        log.info("removing leftover partial cache folder %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def build_once(target: Path, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it with ``build(tmp_dir)`` first if it is not complete.

    ``key`` (JSON-serialisable) describes the source; a complete folder built from a
    different key (e.g. after the asset package was upgraded) is rebuilt.
    ``build`` writes the folder's content into the empty ``tmp_dir`` it is given.
    """
    target = Path(target)
    if is_complete(target, key):  # fast path: no lock once published
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target, key):  # another process built it while we waited
            return target
        _remove_leftovers(target)
        tmp = target.parent / f"{_tmp_prefix(target)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            # Marker last, inside tmp: the folder becomes visible complete or not at all.
            (tmp / MARKER).write_text(json.dumps({"key": key}, indent=2, sort_keys=True))
            if target.exists():
                # Incomplete (half-written by something other than build_once) or stale:
                # move it aside first, since rename cannot replace a non-empty folder.
                aside = target.parent / f"{_tmp_prefix(target)}old-{uuid.uuid4().hex[:8]}"
                os.rename(target, aside)
                shutil.rmtree(aside, ignore_errors=True)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
