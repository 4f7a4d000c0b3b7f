"""conf/ ships inside the package (antibody.conf), so a non-editable install composes configs."""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from antibody.config.compose import default_conf_dir

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_and_conf_group_is_listed_for_setuptools():
    # `packages` is a list (conf/ lies outside src/): a package missing from it would be
    # left out of a non-editable install without any error
    listed = set(_setuptools()["packages"])
    src = ROOT / "src"
    code = {".".join(p.parent.relative_to(src).parts) for p in (src / "antibody").rglob("__init__.py")}
    groups = {f"antibody.conf.{d.name}" for d in (ROOT / "conf").iterdir() if d.is_dir() and d.name != "__pycache__"}
    assert listed == code | groups | {"antibody.conf"}
    assert _setuptools()["package-dir"]["antibody.conf"] == "conf"


def test_conf_dir_is_the_package_resource_when_installed():
    conf = default_conf_dir()
    assert (conf / "config.yaml").is_file() and (conf / "experiment" / "tiny.yaml").is_file()
    if importlib.util.find_spec("antibody.conf") is not None:  # any install made from this pyproject
        assert conf == Path(str(importlib.resources.files("antibody.conf")))


@pytest.mark.slow
def test_non_editable_install_finds_conf_in_the_package(tmp_path):
    """Build a wheel from a copy of the project, install it into a bare folder and compose
    from another directory: the config groups must come from the installed package."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(project)],
                   check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("antibody-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (ROOT / "conf").rglob("*.yaml"):
        assert f"antibody/conf/{path.relative_to(ROOT / 'conf').as_posix()}" in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    # the installed copy first on the path; dependencies from this environment
    env = dict(os.environ, PYTHONPATH=str(site))
    probe = ("import antibody; from antibody.config import compose; from antibody.config.compose import "
             "default_conf_dir; print(antibody.__file__); print(default_conf_dir()); "
             "print(compose(['experiment=tiny']).model.name)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout.split("\n")
    assert out[0].startswith(str(site)) and out[1] == str(site / "antibody" / "conf") and out[2] == "tiny-llama"
    helped = subprocess.run([sys.executable, "-m", "antibody", "data-summary", "--help"], env=env, cwd=tmp_path,
                            check=True, capture_output=True, text=True).stdout
    assert helped.startswith("usage: python -m antibody data-summary")
