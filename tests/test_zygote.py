"""The grader's warm start (dpo_teach/grading/zygote.py): every notebook still runs in namespaces of its own, a zygote
that dies is replaced without losing a notebook, and no zygote outlives the grader."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from dpo_teach.grading import judge, sandbox, zygote

NAMESPACES = ("pid", "net", "mnt", "user", "ipc", "uts")
pytestmark = pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="needs the sandbox (Linux namespaces)")


def notebook(*cells: str) -> str:
    return json.dumps(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]))


def grade(text: str, code: str, env: dict) -> dict:
    return judge.run_notebook(text, "homework.ipynb", {"q": [judge.test_case(code, hidden=False)]}, cell_timeout=60,
                              timeout=120, env=env, sandboxed=True, hide=[])


def test_each_notebook_runs_in_namespaces_of_its_own():
    env = dict(os.environ)
    grader = {ns: os.readlink(f"/proc/self/ns/{ns}") for ns in NAMESPACES}
    warm = zygote.for_env(env)
    assert {ns: os.readlink(f"/proc/{warm.process.pid}/ns/{ns}") for ns in NAMESPACES} == grader
    checks = [">>> import os", ">>> assert os.getpid() == 1, 'the first process of its own PID namespace'",
              *[f">>> assert os.readlink('/proc/self/ns/{ns}') != {link!r}, '{ns}'" for ns, link in grader.items()],
              ">>> assert sorted(p for p in os.listdir('/proc') if p.isdigit()) == ['1'], 'no other process in view'",
              ">>> import tempfile",  # what the zygote's imports settled on (/tmp) is not where temporary files go
              ">>> assert tempfile.gettempdir() == os.environ['TMPDIR'] != '/tmp', tempfile.gettempdir()"]
    for _ in range(2):  # the second fork of the same zygote is just as isolated
        out = grade(notebook("import torch\nx = torch.ones(2).sum().item()"), "\n".join(checks), env)
        assert out["status"] == "graded" and out["cases"]["q"][0]["passed"], out


def test_one_zygote_serves_every_test_and_each_fork_sees_its_calls_environment():
    """pytest changes PYTEST_CURRENT_TEST for every test: the same zygote serves them all, and each notebook sees the
    environment of the call that graded it, not the zygote's. Any other difference gets a zygote of its own."""
    base = dict(os.environ)  # the first test's zygote, when it ran in this worker before
    warm = zygote.for_env({**base, "PYTEST_CURRENT_TEST": "first"})
    for current in ("first", "second"):
        env = {**base, "PYTEST_CURRENT_TEST": current}
        assert zygote.for_env(env) is warm
        out = grade(notebook("import os\nseen = dict(os.environ)"),
                    f">>> assert seen['PYTEST_CURRENT_TEST'] == {current!r}, seen.get('PYTEST_CURRENT_TEST')", env)
        assert out["status"] == "graded" and out["cases"]["q"][0]["passed"], out
    other = zygote.for_env({**base, "PYTEST_CURRENT_TEST": "third", "DPO_TEACH_TEST_ZYGOTE": "other"})
    assert other is not warm and warm.alive()


def test_a_large_environment_reaches_the_fork_and_a_volatile_variable_can_be_unset():
    """A request carries only what differs from the zygote's environment: 400 kB of variables (more than one socket
    message holds) reach the notebook as usual, and a volatile variable that the call does not have is gone."""
    big = {f"DPO_TEACH_TEST_BIG_{i}": str(i) * 100_000 for i in range(4)}
    started = {**os.environ, **big, "PYTEST_CURRENT_TEST": "first"}
    warm = zygote.for_env(started)
    call = {k: v for k, v in started.items() if k != "PYTEST_CURRENT_TEST"}
    assert zygote.for_env(call) is warm
    out = grade(notebook("import os\nseen = {k: v for k, v in os.environ.items() if k.startswith('DPO_TEACH_TEST_')}\n"
                         "volatile = os.environ.get('PYTEST_CURRENT_TEST')"),
                ">>> assert seen == {f'DPO_TEACH_TEST_BIG_{i}': str(i) * 100_000 for i in range(4)} "
                "and volatile is None, volatile", call)
    assert out["status"] == "graded" and out["cases"]["q"][0]["passed"], out


def test_a_zygote_that_dies_ends_no_notebook_and_is_replaced():
    env = {**os.environ, "DPO_TEACH_TEST_ZYGOTE": "1"}  # a zygote of this test's own
    first = zygote.for_env(env)
    slow = notebook("import time\ntime.sleep(3)\nx = 1")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(grade, slow, ">>> assert x == 1", env)
        time.sleep(1.5)  # the notebook is in its sleep
        first.process.kill()
        out = running.result()
    assert out["status"] == "graded" and out["cases"]["q"][0]["passed"], out
    out = grade(notebook("x = 2"), ">>> assert x == 2", env)
    assert out["status"] == "graded" and out["cases"]["q"][0]["passed"], out
    assert zygote.for_env(env) is not first and zygote.for_env(env).alive()


def test_no_zygote_outlives_the_grader(tmp_path):
    script = ("import json, os, sys\nfrom dpo_teach.grading import judge, zygote\n"
              "nb = json.dumps({'cells': [{'cell_type': 'code', 'source': 'x = 1', 'metadata': {}, 'outputs': [],"
              " 'execution_count': None}], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5})\n"
              "tests = {'q': [judge.test_case('>>> assert x == 1', hidden=False)]}\n"
              "out = judge.run_notebook(nb, 'h.ipynb', tests, 60, 120, dict(os.environ), True, [])\n"
              "print(json.dumps([out['cases']['q'][0]['passed'], zygote.for_env(dict(os.environ)).process.pid]))\n"
              "os._exit(0)  # no atexit: the zygote must notice by itself that its grader is gone\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    passed, pid = json.loads(done.stdout.strip().splitlines()[-1])
    assert passed
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the zygote {pid} still runs after its grader ended")


SLEEPER = "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_no_notebook_outlives_a_grader_that_is_killed(tmp_path):
    """A grader ended by SIGTERM (a cancelled CI job, ``kill``) cannot end its notebooks; one that swallows every alarm
    while it sleeps uses no CPU time to run out of, so it ran for ever. Its waiter now watches the grader (its
    lifeline) and ends it. The grader here says which process waits for the notebook once the sleeping cell runs."""
    script = ("import json, os\nfrom test_zygote import SLEEPER, grade, notebook\nfrom dpo_teach.grading import judge\n"
              "receive = judge._Channel.receive\n"
              "def told(self, *expected):\n"
              "    message = receive(self, *expected)\n"
              "    if message.get('event') == 'cell' and message.get('index') == 1:\n"
              "        print(self.process.pid, flush=True)\n"
              "    return message\n"
              "judge._Channel.receive = told\n"
              "grade(notebook('x = 1', SLEEPER), '>>> assert x == 1', dict(os.environ))\n")
    grader = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(__file__), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,  # its notebook's private folder, which a grader
                              env={**os.environ, "TMPDIR": str(tmp_path)})  # ended by a signal cannot delete
    waiter = notebook_process = None
    try:
        line = grader.stdout.readline()
        assert line.strip().isdigit(), grader.stderr.read()[-2000:] if grader.poll() is not None else line
        waiter = int(line)
        children = open(f"/proc/{waiter}/task/{waiter}/children").read().split()
        assert len(children) == 1, children  # the namespace's first process, where the notebook sleeps
        notebook_process = int(children[0])
        time.sleep(0.5)  # the runner is in the sleeping cell now: it reported the cell before running it
        grader.terminate()
        grader.wait(timeout=30)
        for _ in range(100):
            if _gone(waiter) and _gone(notebook_process):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the notebook's processes still run 10 s after their grader ended")
    finally:
        grader.kill()
        for pid in (notebook_process, waiter):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_kernel_without_user_namespaces_is_named_with_what_to_do(tmp_path, monkeypatch):
    """The probe's Python fails as ``isolate`` fails where namespaces are off: the reason quotes it and says what to
    change."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'dpo_teach.grading.sandbox.SandboxUnavailable: unshare(2): "
                    "Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    reason = sandbox.unavailable_reason.__wrapped__()
    assert "unshare(2): Operation not permitted" in reason
    assert "kernel.unprivileged_userns_clone=1" in reason and "apparmor_restrict_unprivileged_userns" in reason


def test_a_machine_limit_below_the_sandboxes_holds_and_no_notebook_is_an_error():
    """Where the administrator set a hard limit below the sandbox's own (``ulimit -Hv`` under its 6 GiB: a shared
    server), no process may raise it. The sandbox keeps the machine's limit; before, every notebook ended before its
    first cell (``ValueError: not allowed to raise maximum limit``), an ``error`` row for every student."""
    below = 5 << 30  # bytes, under the sandbox's 6144 MiB
    script = (f"import json, os, resource\nresource.setrlimit(resource.RLIMIT_AS, ({below}, {below}))\n"
              "from test_zygote import grade, notebook\nfrom dpo_teach.grading import sandbox\n"
              "print(sandbox.memory_limit_mb())\n"
              f"code = '>>> import resource\\n>>> assert resource.getrlimit(resource.RLIMIT_AS) == {(below, below)}'\n"
              "print(json.dumps(grade(notebook('x = 1'), code, dict(os.environ))))")
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(__file__), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "5120", "the grader's own count of the limit"
    row = json.loads(done.stdout.splitlines()[-1])
    assert row["status"] == "graded", row["reason"]
    assert [c["passed"] for c in row["cases"]["q"]] == [True], row["cases"]


def test_a_pool_runs_in_the_sandbox_where_python_starts_workers_from_a_forkserver(tmp_path):
    """Python 3.14 starts multiprocessing's workers from a forkserver by default, which listens on a Unix socket by
    name: the sandbox refuses that socket, so the runner sets ``fork``. A sitecustomize makes this Python's default a
    forkserver (as 3.14's is) before the zygote imports anything."""
    (tmp_path / "sitecustomize.py").write_text("import multiprocessing\n"
                                               "multiprocessing.set_start_method('forkserver')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import multiprocessing; print(multiprocessing.get_start_method())"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "forkserver", "the sitecustomize did not take: this test would test nothing"
    pool = "import multiprocessing\nwith multiprocessing.Pool(2) as p:\n    squares = p.map(abs, [-1, -2, -3])"
    out = grade(notebook(pool), ">>> assert squares == [1, 2, 3], squares", env)
    assert out["status"] == "graded" and out["cases"]["q"][0]["passed"], out
