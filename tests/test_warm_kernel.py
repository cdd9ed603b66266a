"""The test suite's warm kernels (dpo_teach/warm_kernel.py): a notebook runs in a fork of a zygote as it would in a
kernel started cold (its own process, its caller's environment and folder, nothing of an earlier notebook), an
interrupt and a shutdown reach it, and nothing it started outlives its launcher or the process that used it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from dpo_teach import warm_kernel
from dpo_teach.headless import notebook_client

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm kernels fork (Linux)")

REPORT = """
import doctest, json, os, sys, tempfile
kept = tempfile.TemporaryDirectory(prefix="warm-kernel-test-")  # deleted when the kernel exits, as in a cold one
print(json.dumps({"pid": os.getpid(), "parent": os.getppid(), "group": os.getpgid(0), "cwd": os.getcwd(),
                  "mode": os.environ.get("DPO_TEACH_FAST"), "tmp": tempfile.gettempdir(), "kept": kept.name,
                  "path": sys.path, "argv0": os.path.basename(sys.argv[0]), "backend": os.environ.get("MPLBACKEND"),
                  "jupyter": os.environ.get("JPY_PARENT_PID"), "torch": "torch" in sys.modules,
                  "earlier": "earlier" in globals(),
                  # otter's checks run as doctests, whose debugger derives from pdb.Pdb as the kernel set it
                  "doctest": doctest.DocTestRunner().run(doctest.DocTestParser().get_doctest(
                      ">>> 1 + 1\\n2\\n", {}, "t", None, 0)).failed}))
earlier = True
"""


def report(folder: Path, mode: str, warm: bool) -> dict:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(REPORT)])
    old = {name: os.environ.get(name) for name in ("DPO_TEACH_FAST", "TMPDIR")}
    os.environ.update(DPO_TEACH_FAST=mode, TMPDIR=str(folder))
    try:
        notebook_client(nb, warm=warm, timeout=120, kernel_name="python3",
                        resources={"metadata": {"path": str(folder)}}).execute()
    finally:
        for name, value in old.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    (out,) = [o for o in nb.cells[0].outputs if o.output_type == "stream" and o.name == "stdout"]
    return json.loads(out.text)


def test_a_warm_kernel_runs_a_notebook_as_a_cold_one_would(tmp_path):
    cold = report(tmp_path, "1", warm=False)
    first, second = report(tmp_path, "1", warm=True), report(tmp_path, "0", warm=True)
    zygote = warm_kernel.zygote_for(dict(os.environ))
    assert first["parent"] == second["parent"] == zygote.process.pid, "both forks of the one zygote"
    assert first["pid"] != second["pid"] and first["group"] == first["pid"], "a process and a session of its own"
    assert first["torch"] and not cold["torch"], "the warm kernel had torch before its first cell"
    for run, mode in [(first, "1"), (second, "0")]:
        assert not run["earlier"], "nothing of the earlier notebook"
        assert run["mode"] == mode and run["tmp"] == str(tmp_path) == run["cwd"], "the caller's environment and folder"
        for what in ("path", "argv0", "backend", "doctest"):
            assert run[what] == cold[what], (what, run[what], cold[what])
        assert run["jupyter"] == cold["jupyter"] == str(os.getpid())
        assert not Path(run["kept"]).exists(), "a notebook's temporary folder is deleted when its kernel exits"


async def _started(km):
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return kc


async def _run(kc, code: str, timeout: float = 60) -> tuple[dict, str]:
    """Execute ``code``; return its reply's content and what it printed."""
    msg_id = kc.execute(code)
    printed = []
    while True:
        msg = await kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = await kc.get_shell_msg(timeout=timeout)
    return reply["content"], "".join(printed)


def _gone(pids: list[int], within: float = 15) -> bool:
    """Whether every process of ``pids`` has ended (or is a zombie, ended but not yet reaped) within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(_state(pid) == "Z" for pid in pids):
            return True
        time.sleep(0.2)
    return False


def _state(pid: int) -> str:
    """The state letter of process ``pid`` in /proc ("Z" for a zombie), "Z" too where it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_an_interrupt_reaches_a_warm_kernel_and_a_shutdown_ends_it():
    async def scenario():
        km = warm_kernel.kernel_manager_class()()
        kc = await _started(km)
        try:
            # stop_on_error=False: the KeyboardInterrupt is an error, after which ipykernel aborts what is queued
            # then; under a full suite's load the next request once came in time to be aborted ({'status': 'aborted'})
            msg_id = kc.execute("import time\ntime.sleep(120)", stop_on_error=False)
            await asyncio.sleep(1)
            await km.interrupt_kernel()
            while (reply := await kc.get_shell_msg(timeout=30))["parent_header"].get("msg_id") != msg_id:
                pass
            # the pid comes back in the reply itself: under a full suite's load, a print's stream message once came
            # after its cell's idle status here, and _run returned "" (the interrupt is not what that tests)
            after_id = kc.execute("import os", user_expressions={"pid": "os.getpid()"})
            while (after := await kc.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != after_id:
                pass
            launcher = km.provisioner.process.pid
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        return reply["content"], after["content"], launcher

    interrupted, after, launcher = asyncio.run(scenario())
    assert interrupted["status"] == "error" and interrupted["ename"] == "KeyboardInterrupt", interrupted
    assert after["status"] == "ok" and after["user_expressions"]["pid"]["status"] == "ok", \
        f"the kernel goes on after the interrupt: {after}"
    kernel = int(after["user_expressions"]["pid"]["data"]["text/plain"])
    assert _gone([kernel, launcher]), "the kernel and its launcher ended with the shutdown"


def test_killing_the_launcher_ends_the_kernel_and_what_it_started():
    """Jupyter kills a kernel that does not stop with SIGKILL to the launcher, which cannot pass it on."""
    async def scenario():
        km = warm_kernel.kernel_manager_class()()
        kc = await _started(km)
        try:
            _, printed = await _run(kc, "import os, subprocess\nchild = subprocess.Popen(['sleep', '300'])\n"
                                        "print(os.getpid(), child.pid)")
            launcher = km.provisioner.process.pid
            await km.shutdown_kernel(now=True)  # SIGKILL to the launcher's process group
        finally:
            kc.stop_channels()
        return [int(pid) for pid in printed.split()], launcher

    (kernel, child), launcher = asyncio.run(scenario())
    assert _gone([launcher, kernel, child]), "the kernel and the process it started outlived the killed launcher"


def test_no_zygote_outlives_the_process_that_started_it(tmp_path):
    script = ("import os, sys\nfrom dpo_teach import warm_kernel\n"
              "print(warm_kernel.zygote_for(dict(os.environ)).process.pid, flush=True)\n"
              "os._exit(0)  # no clean-up at exit: the zygote must notice by itself")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    zygote = int(out.stdout)
    assert _gone([zygote]), "the zygote outlived the process that started it"


def test_a_zygote_whose_starter_ended_without_closing_it_leaves_no_folder(tmp_path):
    """Each `make test` left a dpo-teach-kernels-* folder with its socket in the temporary folder: a process that
    ends without running its exit handlers (a pytest-xdist worker) never closes its zygote, which then exits on EOF
    and left its folder behind. It removes the folder itself now."""
    code = ("import os\nfrom dpo_teach import warm_kernel\nzygote = warm_kernel.Zygote(dict(os.environ))\n"
            "print(zygote.folder, flush=True)\nos._exit(0)  # no exit handlers: the zygote is never closed")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    folder = Path(done.stdout.strip())
    assert done.returncode == 0 and folder.parent == tmp_path, (done.stdout, done.stderr)
    deadline = time.monotonic() + 30
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not folder.exists(), sorted(p.name for p in folder.iterdir())
