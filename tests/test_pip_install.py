"""scripts/pip_install.py, the Makefile's installer: uv given pip's own configuration, pip where uv fails.

A wheel made here is installed from a ``--find-links`` folder that only pip's configuration names (``PIP_NO_INDEX``,
``PIP_FIND_LINKS``): uv finds it only if the script hands that configuration over.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "pip_install.py"


@pytest.fixture(scope="module")
def script(load_script):
    return load_script("pip_install")


def make_wheel(folder: Path, name: str = "toy_pkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel: one module and its dist-info."""
    files = {f"{name}.py": "ANSWER = 42\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def offline_env(tmp_path: Path, links: Path, **extra: str) -> dict[str, str]:
    """pip configured by variables only: no index, one find-links folder; no pip.conf of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
    empty = tmp_path / "pip.conf"
    empty.write_text("")
    env.update(PIP_CONFIG_FILE=str(empty), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links),
               UV_CACHE_DIR=str(tmp_path / "uv-cache"), **extra)
    return env


@pytest.fixture
def links(tmp_path) -> Path:
    """A find-links folder holding one wheel of toy_pkg 1.0."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    make_wheel(folder)
    return folder


def fake_uv(tmp_path: Path, body: str) -> str:
    """A PATH whose first ``uv`` is a shell script running ``body`` (then failing)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "uv").write_text(f"#!/bin/sh\n{body}\nexit 2\n")
    (folder / "uv").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def install(target: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--quiet", "--target", str(target), "toy_pkg==1.0"],
                          env=env, capture_output=True, text=True, timeout=300)


def test_uv_installs_from_where_pips_configuration_points(tmp_path, script, links):
    if script.find_uv(install=False) is None:
        if os.environ.get("INSTALLER", "").lower() == "pip":
            pytest.skip("INSTALLER=pip: this .venv was set up without uv")
        pytest.fail("uv is missing from .venv: the Makefile's set-up (scripts/pip_install.py) installs it")
    done = install(tmp_path / "target", offline_env(tmp_path, links))
    assert done.returncode == 0, done.stderr
    assert "uv failed" not in done.stderr and "using pip" not in done.stderr, done.stderr
    assert (tmp_path / "target" / "toy_pkg.py").read_text() == "ANSWER = 42\n"
    assert list((tmp_path / "target" / "__pycache__").glob("toy_pkg.*.pyc")), "uv compiled no bytecode"


def test_a_failing_uv_falls_back_to_pip(tmp_path, links):
    env = offline_env(tmp_path, links, PATH=fake_uv(tmp_path, "echo 'uv: broken on purpose' >&2"))
    done = install(tmp_path / "target", env)
    assert done.returncode == 0, done.stderr
    assert "broken on purpose" in done.stderr and "installing the same with pip" in done.stderr
    assert (tmp_path / "target" / "toy_pkg.py").is_file()


def test_installer_pip_never_runs_uv(tmp_path, links):
    env = offline_env(tmp_path, links, PATH=fake_uv(tmp_path, f"touch {tmp_path}/uv-ran"), INSTALLER="pip")
    done = install(tmp_path / "target", env)
    assert done.returncode == 0 and (tmp_path / "target" / "toy_pkg.py").is_file(), done.stderr
    assert not (tmp_path / "uv-ran").exists()


def test_pips_settings_become_uv_options_as_pip_would_apply_them(script):
    config = {"index-url": ["https://mirror/simple"], "extra-index-url": ["file:///a", "file:///b"],
              "find-links": ["/wheels"], "constraint": ["/caps.txt"], "no-index": ["false"], "cert": ["/ca.pem"]}
    cmd = script.uv_command("uv", ["torch==2.13.0"], config, python="py")
    assert cmd[:4] == ["uv", "pip", "install", "--python"] and "--compile-bytecode" in cmd
    assert cmd[cmd.index("--index-strategy") + 1] == "unsafe-best-match"  # pip: the best version of any index
    pairs = list(zip(cmd, cmd[1:]))
    assert {("--index-url", "https://mirror/simple"), ("--extra-index-url", "file:///a"), ("--extra-index-url",
            "file:///b"), ("--find-links", "/wheels"), ("--constraint", "/caps.txt")} <= set(pairs)
    assert "--no-index" not in cmd and "/ca.pem" not in cmd and cmd[-1] == "torch==2.13.0"
    # the command line replaces a single setting and adds to a repeated one, as in pip
    given = ["torch", "--index-url", "https://download.pytorch.org/whl/cpu", "--extra-index-url", "https://pypi.org/simple"]
    cmd = script.uv_command("uv", given, config, python="py")
    assert "https://mirror/simple" not in cmd and cmd.count("--index-url") == 1
    assert cmd.count("--extra-index-url") == 3 and ("--find-links", "/wheels") in set(zip(cmd, cmd[1:]))
    assert "--no-index" in script.uv_command("uv", [], {"no-index": ["1"]}, python="py")


def test_pip_config_reads_files_and_variables(tmp_path, script, monkeypatch):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = file:///x\n    file:///y\nconstraint = /caps.txt\n")
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_FIND_LINKS", "/here /there")
    config = script.pip_config()  # the machine's own pip.conf files are read too (not compared)
    assert {k: config.get(k) for k in ("extra-index-url", "constraint", "find-links")} == {
        "extra-index-url": ["file:///x", "file:///y"], "constraint": ["/caps.txt"], "find-links": ["/here", "/there"]}


def test_where_uv_cannot_be_installed_pip_is_used_and_says_why(tmp_path, script, monkeypatch, capsys):
    python = tmp_path / "bin" / "python"  # an environment without uv whose pip cannot reach an index
    python.parent.mkdir()
    python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for uv' >&2\nexit 1\n")
    python.chmod(0o755)
    monkeypatch.setattr(script.shutil, "which", lambda name: None)
    assert script.find_uv(python=str(python)) is None
    err = capsys.readouterr().err
    assert "uv could not be installed (ERROR: No matching distribution found for uv); using pip" in err
