"""Documentation citations point at files that exist in this repository.

Comments, docstrings, YAML comments, tests, notebooks and the README cite the project's own
documentation (docs/*.md), the paper or the released code. This module fails when:

- a cited ``*.md`` file or ``docs/...`` path does not exist in the repository (a bare
  name resolves against the repository root or the citing file's folder, so a sibling
  link works inside docs/ but not in src/);
- a ``docs/<file>.md ("<heading>")`` citation names a section the file does not have;
- anything mentions the design notes kept outside the repository (a shared docs folder,
  the notes on offline assets and on Lightning), which people who clone it never see.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("src", "conf", "tests", "notebooks", "docs")
SCANNED_ROOT_FILES = ("README.md", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".ipynb", ".md", ".toml", ".txt", ".cfg", ".ini", ".sh"}
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", "fixtures"}

# Written in pieces so that this file does not cite them itself.
FORBIDDEN = (
    "shared" + "/docs",
    "../" + "shared",
    "offline" + "-assets",
    "lightning-" + "notes" + ".md",
)
# A path ending in .md, not part of a URL or a longer path (no word, '.', '/' or '-' before it).
MD_REF = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w.-]+\.md)(?!\w)")
# docs/<path> not part of a URL ("lightning.ai/docs/..." has a '/' before it).
DOCS_REF = re.compile(r"(?<![\w./-])(docs/[\w./-]*)")
# Markdown files a command writes (judge-eval's table.md), not documentation it cites.
GENERATED_MD = {"table.md", "screen.md"}
# docs/<file>.md ("<heading>"): the heading must exist in that file.
SECTION_REF = re.compile(r"(?<![\w./-])(docs/[\w./-]+\.md) \(\"([^\"]+)\"\)")


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_ROOT_FILES if (ROOT / name).is_file()]
    for top in SCANNED_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            parts = set(path.relative_to(ROOT).parts)
            if (
                path.is_file()
                and path.suffix in TEXT_SUFFIXES
                and not parts & SKIPPED_DIRS
                and not any(p.endswith(".egg-info") for p in parts)
            ):
                files.append(path)
    return files


def text_of(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ipynb":  # cite-able text of a notebook: its cells' sources
        cells = json.loads(text).get("cells", [])
        return "\n".join("".join(c.get("source", [])) for c in cells)
    return text


def headings(doc: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in doc.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def citation_problems(text: str, where: Path) -> list[str]:
    """Every broken or forbidden citation in `text`, read as if it were the file `where`."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        at = f"{where.relative_to(ROOT) if where.is_relative_to(ROOT) else where}:{number}"
        for word in FORBIDDEN:
            if word in line:
                found.append(f"{at}: cites {word!r}, which lives outside the repository")
        refs = [m.group(1) for m in MD_REF.finditer(line)]
        refs += [m.group(1).rstrip(".") for m in DOCS_REF.finditer(line)]
        for ref in dict.fromkeys(refs):  # once each: a docs/ path to a .md matches both patterns
            if Path(ref).name in GENERATED_MD:
                continue
            if not any((base / ref).exists() for base in (ROOT, where.parent)):
                found.append(f"{at}: cites {ref!r}, which does not exist in the repository")
        for m in SECTION_REF.finditer(line):
            doc, section = ROOT / m.group(1), m.group(2)
            if doc.is_file() and not any(h.startswith(section) for h in headings(doc)):
                found.append(f"{at}: {m.group(1)} has no section starting with {section!r}")
    return found


def test_the_scan_covers_the_repository():
    files = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert len(files) > 50
    for expected in ("README.md", "conf/method/antibody.yaml", "src/antibody/config/schema.py",
                     "tests/test_docs.py", "docs/method.md"):
        assert expected in files


def test_every_citation_points_into_the_repository():
    problems = [p for path in scanned_files() for p in citation_problems(text_of(path), path)]
    assert not problems, "broken documentation citations:\n" + "\n".join(problems)


def test_docs_index_lists_every_doc():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    docs = ROOT / "docs"
    missing = [p.relative_to(docs).as_posix() for p in sorted([*docs.glob("*.md"), *docs.glob("results/*.md")])
               if p.name != "README.md" and f"({p.relative_to(docs).as_posix()})" not in index]
    assert not missing, f"docs/README.md does not link {missing}"


def test_the_readme_is_a_front_door():
    """Short (the issue's ~200 lines), every generated block but its headline on a results
    page, and every results page linked from it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert re.findall(r"<!-- ([\w-]+):start -->", text) == ["study-embedded-main-paper", "quickstart"]
    for page in sorted((ROOT / "docs" / "results").glob("*.md")):
        assert f"(docs/results/{page.name})" in text, page.name


@pytest.mark.parametrize(
    "line",
    [
        "# see method" + ".md",  # a bare name that only existed outside the repository
        "# docs/" + "missing" + ".md",
        "# docs/method.md (" + '"No such section")',
        "# as measured in the " + FORBIDDEN[2] + " notes",
        "# " + FORBIDDEN[0] + "/anything",
    ],
)
def test_the_checker_catches_bad_citations(line):
    where = ROOT / "src" / "antibody" / "example.py"
    assert citation_problems(line, where)


@pytest.mark.parametrize(
    "line",
    [
        "# docs/method.md (" + '"Stage 1")',
        "# README.md and docs/calibration.md; https://lightning.ai/docs/pytorch/stable/x" + ".md",
        "# trainers/weighted_sft.py of the released code",
    ],
)
def test_the_checker_accepts_good_citations(line):
    where = ROOT / "src" / "antibody" / "example.py"
    assert citation_problems(line, where) == []


def test_the_readme_quickstart_names_what_exists():
    """Every command of the README's quickstart is a command of ours with arguments that hold
    today: align/finetune overrides compose, the study file loads, the script exists (running
    the quickstart itself is what `make test-slow` and the issue's check do; this catches drift
    in seconds)."""
    import shlex

    from antibody.cli.main import Command
    from antibody.config import compose
    from antibody.config.study import load_study

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- quickstart:start -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("python ")]
    seen = set()
    for line in lines:
        words = shlex.split(line)
        if words[1] != "-m":  # a script of ours
            assert (ROOT / words[1]).is_file(), line
            continue
        assert words[2] == "antibody", line
        command, args = words[3], words[4:]
        assert command in {c.value for c in Command}, line
        seen.add(command)
        if command in ("align", "finetune"):
            compose(args)
        elif command == "study":
            load_study(ROOT / args[0])
    assert {"align", "finetune", "eval", "study", "screen"} <= seen


# our own files cited with a line in docs/fidelity.md: `src/.../x.py:12`, `repnoise.yaml:9-10`
# (a bare .py name may be a released file: train.py, utils.py; a bare .yaml name is ours)
OWN_LINE_REF = re.compile(r"`((?:src|conf)/[\w/.-]+|[\w-]+\.yaml):(\d+)(?:-(\d+))?`")


def test_fidelity_table_covers_every_method_file_and_cites_lines_that_exist():
    text = (ROOT / "docs/fidelity.md").read_text()
    for path in sorted((ROOT / "conf" / "method").glob("*.yaml")):
        assert f"`conf/method/{path.name}`" in text or f"| `{path.name}` |" in text, path.name
    own = {p.name: p for p in (ROOT / "conf" / "method").glob("*.yaml")}
    checked = 0
    for name, first, last in OWN_LINE_REF.findall(text):
        path = ROOT / name if "/" in name else own.get(name)
        if path is None:  # a released file's name: not ours
            continue
        assert path.is_file(), name
        lines = len(path.read_text().splitlines())
        assert int(last or first) <= lines, f"{name}:{first}{'-' + last if last else ''} beyond its {lines} lines"
        checked += 1
    assert checked >= 10
