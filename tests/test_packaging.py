"""The distribution: what pyproject.toml lists, and what the wheel holds.

The repository keeps ``gpuq/``, ``scheduler/``, ``worker/`` and ``cli/`` at its top, and
setuptools maps them into the one import name ``gpuq`` (``[tool.setuptools] package-dir``)
with an explicit ``packages`` list. An explicit list is easy to forget: a new subpackage
missing from it installs in editable mode (which maps whole folders) and is then missing
from the wheel. These tests hold the list to the source tree, and check a real wheel.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
#: Dotted package -> its folder, relative to the repository root.
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
PACKAGES: list[str] = SETUPTOOLS["packages"]
PACKAGE_DATA: dict[str, list[str]] = SETUPTOOLS.get("package-data", {})


def folder_of(package: str) -> Path:
    """The source folder of a dotted package, through the longest package-dir mapping."""
    root = max((p for p in PACKAGE_DIR if package == p or package.startswith(p + ".")), key=len)
    rest = package[len(root):].lstrip(".")
    return REPO_ROOT / PACKAGE_DIR[root] / Path(*rest.split(".") if rest else ())


def packages_on_disk() -> dict[str, Path]:
    """Every folder with an ``__init__.py`` under the mapped roots -> its dotted name.

    A folder under one root that another mapping owns (``gpuq/cli/`` while ``gpuq.cli`` is
    ``cli/``) is skipped: setuptools takes the mapped folder."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIR.items():
        base = REPO_ROOT / folder
        for init in sorted(base.rglob("__init__.py")):
            parts = init.parent.relative_to(base).parts
            name = ".".join((package, *parts))
            owner = max((p for p in PACKAGE_DIR if name == p or name.startswith(p + ".")),
                        key=len)
            if owner == package:
                found[name] = init.parent
    return found


def shipped_as_data(path: Path) -> bool:
    """Whether a file is package data: it matches a ``package-data`` glob of its package."""
    for package, patterns in PACKAGE_DATA.items():
        base = folder_of(package)
        if not path.is_relative_to(base):
            continue
        rel = path.relative_to(base).as_posix()
        if any(fnmatch(rel, pattern) and rel.count("/") == pattern.count("/")
               for pattern in patterns):
            return True
    return False


def test_packages_list_is_every_package_folder() -> None:
    """``[tool.setuptools] packages`` is exactly the folders that have an ``__init__.py``."""
    on_disk = packages_on_disk()
    listed = set(PACKAGES)
    twice = sorted(p for p in listed if PACKAGES.count(p) > 1)
    assert not twice, f"pyproject.toml's [tool.setuptools] packages lists these twice: {twice}"
    missing = sorted(set(on_disk) - listed)
    extra = sorted(listed - set(on_disk))
    assert not missing, (
        "packages with an __init__.py that pyproject.toml's [tool.setuptools] packages does not "
        f"list (the wheel would lack them): {missing}")
    assert not extra, (
        f"pyproject.toml's [tool.setuptools] packages lists packages with no __init__.py: {extra}")


def test_package_dir_roots_are_listed_packages() -> None:
    """Each ``package-dir`` mapping names a listed package and an existing folder."""
    for package, folder in PACKAGE_DIR.items():
        assert package in PACKAGES, f"package-dir maps {package}, which packages does not list"
        assert (REPO_ROOT / folder / "__init__.py").is_file(), f"{folder}/__init__.py is missing"


def test_every_python_file_ships() -> None:
    """Every ``.py`` file under the roots is in a listed package or is package data (the
    migrations): a folder of modules without an ``__init__.py`` would silently not ship."""
    listed = {folder_of(p) for p in PACKAGES}
    stranded = sorted(
        str(path.relative_to(REPO_ROOT))
        for folder in PACKAGE_DIR.values()
        for path in (REPO_ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
        and path.parent not in listed and not shipped_as_data(path)
    )
    assert not stranded, (
        "these files are in no package of pyproject.toml's list and match no package-data "
        f"glob, so no wheel would hold them: {stranded}")


# -- the wheel -------------------------------------------------------------------------------


def _cannot_build_wheel() -> str | None:
    """Why a wheel cannot be built here offline (no build isolation), or None."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip wheel --no-build-isolation needs it)"
    has_bdist_wheel = importlib.util.find_spec("wheel") is not None or \
        importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
    if not has_bdist_wheel:
        return ("neither the wheel package nor setuptools>=70.1 (its own bdist_wheel) is "
                "installed; pip wheel --no-build-isolation needs one (pip install wheel)")
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """A wheel built offline from a copy of the source (the copy keeps setuptools' build/ and
    egg-info out of the working tree)."""
    reason = _cannot_build_wheel()
    if reason:
        pytest.skip(reason)
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("wheel")
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    for folder in PACKAGE_DIR.values():
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=skip)
    env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out)],
        cwd=src, env=env, capture_output=True, text=True, timeout=150, check=False)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = list(out.glob("gpuq-*.whl"))
    assert len(wheels) == 1, f"expected one gpuq wheel, got {[w.name for w in out.iterdir()]}"
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def _names(wheel: zipfile.ZipFile) -> list[str]:
    return [n for n in wheel.namelist() if not n.endswith("/")]


def test_wheel_holds_gpuq_only(wheel: zipfile.ZipFile) -> None:
    """Every file is under ``gpuq/`` or the ``gpuq-<version>.dist-info/`` folder."""
    strays = [n for n in _names(wheel)
              if not n.startswith("gpuq/")
              and not (n.startswith("gpuq-") and n.split("/")[0].endswith(".dist-info"))]
    assert not strays, f"files outside gpuq/ and gpuq-*.dist-info/: {strays}"


def test_wheel_holds_every_module(wheel: zipfile.ZipFile) -> None:
    """Every module of every listed package is in the wheel, under its mapped name."""
    names = set(_names(wheel))
    expected = {
        "/".join((*package.split("."), path.name))
        for package in PACKAGES
        for path in folder_of(package).glob("*.py")
    }
    missing = sorted(expected - names)
    assert not missing, f"modules missing from the wheel: {missing}"


def test_wheel_holds_migrations_and_traces(wheel: zipfile.ZipFile) -> None:
    """The Alembic migrations and the shipped simulator traces are in the wheel, every one
    of the repository's."""
    names = set(_names(wheel))
    versions = [n for n in names
                if fnmatch(n, "gpuq/scheduler/db/migrations/versions/*.py")]
    traces = [n for n in names if fnmatch(n, "gpuq/scheduler/sim/traces/*.csv.gz")]
    assert versions, "no gpuq/scheduler/db/migrations/versions/*.py in the wheel"
    assert traces, "no gpuq/scheduler/sim/traces/*.csv.gz in the wheel"
    assert "gpuq/scheduler/db/migrations/env.py" in names
    for folder, pattern, prefix in (
            ("scheduler/db/migrations/versions", "*.py", "gpuq/scheduler/db/migrations/versions"),
            ("scheduler/sim/traces", "*.csv.gz", "gpuq/scheduler/sim/traces")):
        in_repo = {f"{prefix}/{p.name}" for p in (REPO_ROOT / folder).glob(pattern)}
        assert in_repo <= names, f"missing from the wheel: {sorted(in_repo - names)}"


def test_wheel_entry_point(wheel: zipfile.ZipFile) -> None:
    """``entry_points.txt`` declares the ``gpuq`` command: ``gpuq = gpuq.cli.main:main``."""
    [entry_points] = [n for n in _names(wheel)
                      if PurePosixPath(n).name == "entry_points.txt"
                      and n.split("/")[0].endswith(".dist-info")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert parser.has_section("console_scripts"), wheel.read(entry_points).decode()
    assert parser["console_scripts"].get("gpuq") == "gpuq.cli.main:main"
