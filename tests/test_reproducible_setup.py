"""The container recipe and the lock file (issue 14): the devcontainer's set-up is the Makefile's own, and
requirements.lock pins exactly what dpo-teach[dev,peers] needs, within pyproject's ranges.

Installing the lock into a fresh venv takes minutes; it was measured by hand (README, "Reproducible set-up")."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def devcontainer() -> dict:
    """``.devcontainer/devcontainer.json``: JSON with ``//`` comment lines, as VS Code reads it."""
    text = (ROOT / ".devcontainer" / "devcontainer.json").read_text()
    return json.loads("\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//")))


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), f"not an exact pin: {line!r}"
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for extra in ("dev", "peers") for r in project["optional-dependencies"][extra]]
    return [Requirement(line) for line in lines]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_devcontainer_runs_the_makefiles_own_install(tmp_path):
    config = devcontainer()
    assert config["image"].startswith("mcr.microsoft.com/devcontainers/python:3.11")
    command = shlex.split(config["postCreateCommand"])
    assert command[0] == "make"
    target, variables = command[1], command[2:]
    assert target == ".venv/.installed"  # the bootstrap of `make demo`/`make test`, nothing of its own
    venv = tmp_path / "venv"
    dry = subprocess.run(["make", "-n", "-B", f"{venv}/.installed", f"VENV={venv}", *variables], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "torch_spec.py" in dry and "-r requirements.lock" in dry and '-e ".[dev,peers]"' in dry
    assert 8888 in config["forwardPorts"]  # JupyterLab's port for `make lab`


def test_the_lock_pins_every_dependency_within_pyproject():
    pins = lock_pins()
    assert "torch" not in pins and "dpo-teach" not in pins  # torch: scripts/torch_spec.py; the package: -e .
    for req in project_requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock has {name}=={pins[name]}, not {req}"


def test_the_lock_script_follows_extras_and_markers():
    loader = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
    lock = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(lock)
    found = lock.closure()
    assert {"dpo-teach", "torch", "nbclient", "trl", "pytest-xdist"} <= set(found)  # itself, deps, dev, peers
    assert "fqdn" in found  # only through jupyter-events' jsonschema[format-nongpl]: an extra of a dependency
    assert "pip" not in found
