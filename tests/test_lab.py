"""``make lab`` as a student's container runs it: as root where the tests run as root, served on 127.0.0.1 only,
opening the course map (notebooks/00_start_here.ipynb) first. Issue 14: JupyterLab refused to start as root."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)  # the environment running the tests; `make lab` uses its bin/jupyter
TOKEN = "dpo-teach-test"

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (VENV / "bin" / "jupyter").exists(),
                                reason="needs make and jupyter in this environment's bin/")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_lab(*variables: str, dry_run: bool = False, **popen) -> subprocess.Popen | str:
    """``make lab`` with this environment as the venv; its stamp counts as up to date (``-o``): nothing installs."""
    cmd = ["make", "-s", "-o", f"{VENV}/.installed", "lab", f"VENV={VENV}", *variables]
    if dry_run:
        return subprocess.run(cmd[:1] + ["-n"] + cmd[1:], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
    return subprocess.Popen(cmd, cwd=ROOT, **popen)


def get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def opened_page(log: Path, wait: float = 15) -> str:
    """The page JupyterLab sent the browser to: ``BROWSER=echo`` printed its ``file://...-open.html`` to the log."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = re.search(r"file://(\S+-open\.html)", log.read_text())
        if found:
            return Path(urllib.request.url2pathname(found.group(1))).read_text()
        time.sleep(0.3)
    raise AssertionError(f"no browser was opened:\n{log.read_text()[-2000:]}")


def test_lab_command_binds_localhost_and_allows_root_only_as_root():
    line = make_lab(dry_run=True).replace("\\\n", " ")
    assert "--ip 127.0.0.1" in line and line.split()[-1] == "notebooks/00_start_here.ipynb"
    shell = subprocess.run(["sh", "-c", line.replace(f"{VENV}/bin/jupyter lab", "echo")], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout
    assert ("--allow-root" in shell.split()) == (os.getuid() == 0)


def test_make_lab_starts_answers_its_api_and_stops(tmp_path):
    port = free_port()
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "BROWSER": "echo"}  # the "browser" prints its URL
    args = f"LAB_ARGS=--port {port} --ServerApp.port_retries=0 --IdentityProvider.token={TOKEN}"
    log = tmp_path / "lab.log"
    with open(log, "wb") as out:
        lab = make_lab(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        status, deadline = None, time.monotonic() + 25
        while status is None and time.monotonic() < deadline:
            assert lab.poll() is None, f"make lab exited ({lab.returncode}):\n{log.read_text()[-2000:]}"
            try:
                status = get(f"http://127.0.0.1:{port}/api/status")
            except OSError:
                time.sleep(0.3)
        assert status is not None, f"no answer on 127.0.0.1:{port} within 25 s:\n{log.read_text()[-2000:]}"
        assert status[0] == 200 and "started" in json.loads(status[1])
        code, body = get(f"http://127.0.0.1:{port}/api/contents/00_start_here.ipynb?content=0")
        assert code == 200 and json.loads(body)["type"] == "notebook"  # served from notebooks/
        assert "/lab/tree/00_start_here.ipynb" in opened_page(log), "the browser was not sent to the course map"
        import psutil

        def listening_on(process) -> list:  # a short-lived child (the browser command) may end while it is read
            try:
                return [c.laddr for c in process.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            except (psutil.NoSuchProcess, FileNotFoundError):
                return []

        listening = [addr for p in psutil.Process(lab.pid).children(recursive=True) for addr in listening_on(p)]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
        # as root (os.getuid() == 0 here), JupyterLab without --allow-root exits before it listens
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
