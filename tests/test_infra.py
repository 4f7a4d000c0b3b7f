"""antibody.infra.files: atomic writes, JSONL appends, YAML errors, and its place as the bottom layer."""

from __future__ import annotations

import ast
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from antibody.config.errors import ConfigError, DataError
from antibody.infra import files as F

INFRA_DIR = Path(F.__file__).parent


class _FailsWhenPickled:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# Each writer is given content that fails to serialise after part of it was written
# (json.dump and pickle.dump stream, the JSONL writer goes record by record).
FAILING_WRITES = {
    "json": lambda path: F.atomic_write_json(path, {"text": "x" * 100_000, "bad": object()}),
    "jsonl": lambda path: F.atomic_write_jsonl(path, [{"a": "x" * 100_000}, {"b": object()}]),
    "pickle": lambda path: F.atomic_write_pickle(path, [b"x" * 100_000, _FailsWhenPickled()]),
}


@pytest.mark.parametrize("kind", sorted(FAILING_WRITES))
def test_failed_write_keeps_old_file_and_leaves_no_temp_file(tmp_path, kind):
    target = tmp_path / "out.dat"
    target.write_bytes(b"old content\n")
    with pytest.raises((TypeError, RuntimeError)):
        FAILING_WRITES[kind](target)
    assert target.read_bytes() == b"old content\n"
    assert _only(tmp_path) == ["out.dat"]


def test_interrupt_inside_the_writer_leaves_no_temp_file(tmp_path):
    def interrupted(fh):
        fh.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        F.atomic_write(tmp_path / "out.txt", interrupted)
    assert _only(tmp_path) == []


def test_json_and_pickle_round_trip(tmp_path):
    obj = {"name": "Zoë", "values": [1, 2.5, None, True], "nested": {"k": "v"}}
    F.atomic_write_json(tmp_path / "a" / "o.json", obj)  # creates the missing folder
    text = (tmp_path / "a" / "o.json").read_text(encoding="utf-8")
    assert json.loads(text) == obj and text.endswith("}\n") and "Zoë" in text
    F.atomic_write_json(tmp_path / "ascii.json", obj, ensure_ascii=True, default=str)
    assert "Zo\\u00eb" in (tmp_path / "ascii.json").read_text()
    F.atomic_write_json(tmp_path / "path.json", {"p": Path("x/y")}, default=str)
    assert json.loads((tmp_path / "path.json").read_text()) == {"p": "x/y"}

    payload = {"tuple": (1, "two"), "set": {3}, "bytes": b"\x00\xff"}
    F.atomic_write_pickle(tmp_path / "p.pkl", payload)
    with open(tmp_path / "p.pkl", "rb") as fh:
        assert pickle.load(fh) == payload
    F.atomic_write_text(tmp_path / "t.txt", "line\n")
    F.atomic_write_text(tmp_path / "t.txt", "replaced\n")
    assert (tmp_path / "t.txt").read_text() == "replaced\n"
    assert _only(tmp_path) == ["a", "ascii.json", "p.pkl", "path.json", "t.txt"]


def test_jsonl_append_writes_one_line_per_record(tmp_path):
    path = tmp_path / "rows.jsonl"
    F.append_jsonl(path, [{"i": 0, "text": "é"}, {"i": 1, "text": "two\nlines"}])
    F.append_jsonl(path, [{"i": 2}])
    F.append_jsonl(path, [])
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""  # every record ends with a newline
    assert [json.loads(line)["i"] for line in lines[:-1]] == [0, 1, 2]
    assert "é" in lines[0]
    # a record that cannot be serialised adds nothing, not even the records before it
    with pytest.raises(TypeError):
        F.append_jsonl(path, [{"i": 3}, {"bad": object()}])
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3


def test_atomic_jsonl_replaces_the_whole_file(tmp_path):
    path = tmp_path / "w.jsonl"
    F.atomic_write_jsonl(path, [{"a": 1}, {"a": 2}])
    F.atomic_write_jsonl(path, ({"b": i} for i in range(3)))
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"b": 0}, {"b": 1}, {"b": 2}]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: 2\n  c: 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:3: invalid YAML: mapping values are not allowed"):
        F.read_yaml(path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: invalid YAML"):
        F.read_yaml(path, error=DataError)
    with pytest.raises(ConfigError, match=r"^conf/x\.yaml:2: invalid YAML"):
        F.parse_yaml("a: [1\nb: 2\n", "conf/x.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        F.read_yaml(tmp_path / "missing.yaml")
    path.write_text("a: 1\nb: [x, y]\n")
    assert F.read_yaml(path) == {"a": 1, "b": ["x", "y"]}


def test_infra_imports_no_other_antibody_package():
    allowed = {"antibody.errors"}  # the bottom module (tests/test_layers.py holds every package's edges)
    for source in INFRA_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            bad = [n for n in names if n.startswith("antibody") and n not in allowed]
            assert not bad, f"{source.name} imports {bad}: infra is the bottom layer"


def test_infra_imports_first_in_a_fresh_interpreter():
    # infra takes its errors from antibody.errors, below antibody.config (which imports infra):
    # importing infra first loads no half-initialised package
    subprocess.run([sys.executable, "-c", "import antibody.infra.files"], check=True)


def test_the_test_session_blocks_the_network_but_not_loopback():
    """conftest.py: a connection off this machine fails at once, whatever HF_HUB_OFFLINE says;
    loopback (DDP rendezvous, notebook kernels) still connects."""
    import socket
    import threading

    from tests.conftest import NetworkBlocked

    for address in (("203.0.113.7", 443), ("huggingface.co", 443)):
        with socket.socket() as s, pytest.raises(NetworkBlocked, match="tests may not reach the network"):
            s.connect(address)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        accept = threading.Thread(target=lambda: server.accept()[0].close())
        accept.start()
        with socket.socket() as client:
            client.connect(server.getsockname())
        accept.join(timeout=5)
