"""``pip install``, with uv's speed where uv can be had: the Makefile's bootstrap installs through this script.

    .venv/bin/python scripts/pip_install.py [pip install arguments...]

installs into the environment of the Python that runs it. It uses ``uv pip install`` (uv from PATH, from the
environment, or installed into it with pip: a few MB) and falls back to plain ``pip install`` when uv cannot be had or
fails (offline, an unsupported platform). ``INSTALLER=pip`` skips uv.

Both give the same packages at the same versions: uv is handed pip's own configuration (``pip config list``: pip.conf
files and ``PIP_*`` variables), which uv would not read: its indexes and ``--find-links`` locations (a local torch
file, say), its constraints and its certificate bundle, with pip's rule of the best version from any index
(``--index-strategy unsafe-best-match``). As with pip, an argument given here replaces a single setting
(``--index-url``) and adds to a repeated one (``--extra-index-url``, ``--find-links``, ``--constraint``). What makes
uv faster: it installs in parallel from a cache of unpacked wheels and compiles the bytecode on every core
(``--compile-bytecode``; pip compiles on one), so a fresh ``.venv`` takes about half the time (benchmarks/README.md).

``--dry-run-plan`` prints the command each installer would run and installs nothing (tests/test_setup_torch.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

# pip's settings that change what gets installed, and the uv option for each (uv reads neither pip.conf nor PIP_*).
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraint", "no-index": "--no-index"}
REPEATED = ("extra-index-url", "find-links", "constraint")  # several values, separated by spaces or lines


def pip_config(python: str = sys.executable) -> dict[str, list[str]]:
    """pip's effective settings that decide what it installs: ``{"find-links": ["/opt/wheels"], ...}``.

    ``pip config list`` prints ``scope.key='value'`` lines, files first, then ``:env:`` (``PIP_*``): for the same key
    the later line wins, as in pip.
    """
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    settings: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        name, _, value = line.partition("=")
        key = name.rpartition(".")[2]
        value = value.strip().strip("'\"").replace("\\n", " ")  # pip prints a value of several lines joined by "\\n"
        if key in OPTIONS or key == "cert":
            settings[key] = value.split() if key in REPEATED else [value]
    return settings


def uv_command(uv: str, args: list[str], config: dict[str, list[str]], python: str = sys.executable) -> list[str]:
    """``uv pip install`` with ``args`` and, where ``args`` do not set it, each pip setting of ``config``."""
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    cmd = [uv, "pip", "install", "--python", python, "--compile-bytecode", "--index-strategy", "unsafe-best-match"]
    for key, flag in OPTIONS.items():
        values = config.get(key, [])
        if not values or (flag in given and key not in REPEATED):
            continue  # as in pip: the command line replaces a single setting and adds to a repeated one
        if key == "no-index":
            cmd += [flag] if values[0].lower() in ("1", "true", "yes", "on") else []
        else:
            cmd += [part for value in values for part in (flag, value)]
    return cmd + args


def find_uv(python: str = sys.executable, install: bool = True) -> str | None:
    """uv on PATH or in this environment; else installed into it with pip (None where that fails)."""
    here = Path(python).parent / ("uv.exe" if os.name == "nt" else "uv")
    found = shutil.which("uv") or (str(here) if here.is_file() else None)
    if found or not install:
        return found
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "uv"], capture_output=True, text=True)
    if done.returncode != 0 or not here.is_file():
        why = (done.stderr.strip().splitlines() or [f"no {here.name} in {here.parent}"])[-1]
        print(f"pip_install: uv could not be installed ({why}); using pip", file=sys.stderr)
        return None
    return str(here)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    plan = "--dry-run-plan" in args
    args = [a for a in args if a != "--dry-run-plan"]
    pip = [sys.executable, "-m", "pip", "install", *args]
    uv = None if os.environ.get("INSTALLER", "").lower() == "pip" else find_uv(install=not plan)
    if plan:
        print("pip:", shlex.join(pip))
        print("uv:", shlex.join(uv_command(uv or "uv", args, pip_config())))
        return 0
    if uv is not None:
        config = pip_config()
        env = dict(os.environ)
        if config.get("cert") and "SSL_CERT_FILE" not in env:
            env["SSL_CERT_FILE"] = config["cert"][0]  # pip's certificate bundle (a proxy's, say)
        if subprocess.run(uv_command(uv, args, config), env=env).returncode == 0:
            return 0
        print("pip_install: uv failed (above); installing the same with pip", file=sys.stderr)
    return subprocess.run(pip).returncode


if __name__ == "__main__":
    sys.exit(main())
