"""Submissions that attack the grader, and honest ones that must not be hurt by it: one `grade` batch.

Every attack class a student has tried on an in-kernel grader (score inflation by patching, test rewriting, forged
replies, impersonating the runner from a cell, processes left behind, signalling the grader, reading the hidden
tests, answers that call the package's implementation) is a submission here, graded in one batch with innocent
notebooks before and after it; the fairness cases (lost metadata, a debug print, two notebooks of one assignment,
ordinary code that looks like an attack to a careless scan, a notebook that is not graded) are in the same batch.
Each hostile answer is wrong, so the only way it could score is by beating the grader. The runner's own defences
are also tested alone (``judge.run_notebook``, no scan): what the scan would flag must still not score.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from test_grading import exercise_solution, replaced  # tests/ is on sys.path (pytest's rootdir import)
from test_sandbox import real_home
from test_zygote import notebook

from dpo_teach import grading
from dpo_teach.grading import judge, sandbox
from dpo_teach.grading.journal import resumable
from dpo_teach.grading.reports import empty_row
from dpo_teach.grading.scan import scan

OTTER = importlib.util.find_spec("otter").origin  # the environment's otter package, a target for tampering

WRONG_KL = """
import torch
def kl_divergence(p, q):
    return (q * (torch.log(q) - torch.log(p))).sum(-1)  # KL(q‖p): the wrong direction
"""

# How both attacks below begin: the locals of the runner's frame, which hold `send` (and `requests`), through a
# package outside the standard library that reads frames for its caller (IPython's own helpers: the scan flags the
# import). Not through sys._getframe, a traceback's frame or the standard library: the runner's audit hook ends the
# process at those (test_the_memory_and_the_channel_are_closed_to_a_notebook_...), and these attacks are here to show
# what the runner's later defences do with a thief that got past the hook and the scan.
STEAL_FRAME = """
    _frames, _depth = __import__("IPython.utils.frame", fromlist=["frame"]), 1
    while not {{"send", "requests"}} <= set(_frames.extract_module_locals(_depth)[1]):
        _depth += 1
    _loc = _frames.extract_module_locals(_depth)[1]
"""
# Mallory's attack (a review, on notebook 05): with the runner's `send` and requests, say `ready` and answer every
# question as passed while the cell still runs, then never end it. Braces doubled: format().
TAKE_OVER = "import json as _json\n\ndef _take_over():" + STEAL_FRAME + """
    _send, _req = _loc["send"], _loc["requests"]
    _send("ready", tampered=[])
    for _line in _req:
        _m = _json.loads(_line)
        if "cases" not in _m:
            break
        _send("result", question=_m["question"], cases=[{{"passed": True, "message": ""}} for _ in _m["cases"]],
              tampered=[])
    while True:
        pass

_take_over()
"""
# The same theft, but the cell ends: in the notebook's last cell, `ready` and a passing reply to every question
# (their names and case counts known, say from an earlier submission) are written before the runner's own `ready`.
PREPARED_REPLIES = "def _prepare():" + STEAL_FRAME + """
    _send = _loc["send"]
    _send("ready", tampered=[])
    for _question, _count in {counts}.items():
        _send("result", question=_question, cases=[{{"passed": True, "message": ""}}] * _count, tampered=[])

_prepare()
"""
PATCH_DOCTEST = "import doctest\ndoctest.DocTestParser.get_examples = lambda self, text, name='<string>': []"

# The zygote's fork of a notebook's process (its own code, ``zygote._child``) on a machine whose kernel refuses the
# sandbox's namespaces: ``sandbox.isolate`` fails there as it fails on such a kernel.
REFUSED_FORK = """
import json, os, socket
from dpo_teach.grading import sandbox, zygote

def refused(grader=None):
    raise sandbox.SandboxUnavailable("unshare(2): Operation not permitted")

sandbox.isolate = refused
zygote._child(socket.socket(), [0, 1, 2], json.dumps({"set": {}, "unset": []}).encode(), dict(os.environ))
"""


def spawn_refused(env: dict, stdin: int, stdout: int, stderr: int) -> int:
    """A stand-in for ``judge._spawn`` where the sandbox cannot start: the notebook's process runs the zygote's fork
    code with the job's three channels, and its ``isolate`` fails (``REFUSED_FORK``)."""
    return subprocess.Popen([sys.executable, "-c", REFUSED_FORK], stdin=stdin, stdout=stdout, stderr=stderr,
                            env=env).pid

# Ordinary code that a careless scan took for an attack (a review found each): inside a correct notebook it must
# scan clean and score in full.
INNOCENT_CODE = {
    "dunders in a helper class": "class Running:\n    def __init__(self):\n        self.total = 0.0\n\n"
                                 "    def __repr__(self):\n        return f'Running({self.total})'\n\n"
                                 "    def sum(self):\n        return self.total\n\nrunning = Running()",
    "sys.stdout.write": "import sys\nsys.stdout.write('progress\\n')",
    "a module's .modules()": "import torch\nm = [torch.nn.Sequential(torch.nn.Linear(2, 2))]\n"
                             "n_modules = len(list(m[0].modules()))",
    "reading the package's source": "import inspect\nimport dpo_teach.losses\n"
                                    "source = inspect.getsource(dpo_teach.losses.dpo_loss)",
    "vars of a config": "from dataclasses import dataclass\n\n@dataclass\nclass Cfg:\n    beta: float = 0.1\n\n"
                        "settings = vars(Cfg())",
    "a plot titled tests": "import matplotlib.pyplot as plt\nplt.title('tests')\nplt.close()",
    "a loop variable named id": "for id in range(3):\n    pass",
    "open(...).write": "import os\nimport tempfile\n"
                       "open(os.path.join(tempfile.mkdtemp(), 'notes.txt'), 'w').write('notes')",
    "a computed value named sum": "import torch\nsum = torch.ones(3).sum()",
    "an f-string file name": "names = [f'f_{i}.png' for i in range(2)]",
    "getattr with a constant": "import torch\nshape = getattr(torch.ones(2), 'shape')",
    "output thrown away in /dev/null": "import contextlib, os\nwith open(os.devnull, 'w') as sink, "
                                       "contextlib.redirect_stdout(sink):\n    print('quiet')",
}

# name → (assignment, cell to find, its replacement, cells put in front of it)
HOSTILE = {
    "patch_allclose": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import torch\ntorch.allclose = lambda *a, **k: True\n"
        "torch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)"]),
    "patch_builtins": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import builtins\nbuiltins.abs = lambda x: 0 * x\nbuiltins.all = lambda it: True\n"
        "builtins.float = lambda x: 0.0"]),
    "shadow_builtins": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "def abs(x):\n    return 0 * x\n\nall = lambda it: True\nbool = lambda x: True"]),
    "patch_while_tested": ("01_kl_objective", "def kl_divergence(", """
import torch
def kl_divergence(p, q):
    torch.allclose = lambda *a, **k: True
    import builtins
    builtins.abs = lambda x: 0 * x
    return (q * (torch.log(q) - torch.log(p))).sum(-1)
""", []),
    "rewrite_tests": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import os, pathlib, glob\n"
        "for d in ['tests', 'autograder', '{autograder}', '{root}/course/autograder', '{root}/tests']:\n"
        "    for p in glob.glob(d + '/*'):\n"
        "        try:\n"
        "            pathlib.Path(p).write_text('test = {{\"name\": \"x\", \"points\": 100, \"suites\": []}}')\n"
        "        except OSError:\n"
        "            pass\n"
        "for code in ['{root}/dpo_teach/losses.py', '{otter}']:\n"
        "    try:\n"
        "        open(code, 'a').write('\\n# tampered by a submission\\n')\n"
        "    except OSError:\n"
        "        pass\n"
        "os.makedirs('tests', exist_ok=True)\n"
        "pathlib.Path('tests/kl_divergence.py').write_text('OK_FORMAT = True\\ntest = {{}}')"]),
    "forge_reply": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import os, json\n"
        "for fd in range(3, 64):\n"
        "    for line in ['done\\n', json.dumps({{'id': 'x', 'event': 'ready', 'tampered': []}}) + '\\n']:\n"
        "        try:\n"
        "            os.write(fd, line.encode())\n"
        "        except OSError:\n"
        "            pass"]),
    "background_process": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', '''\n"
        "import glob, pathlib, time\n"
        "for _ in range(200):\n"
        "    time.sleep(0.1)\n"
        "    for p in glob.glob(\"{submissions}/**/*.ipynb\", recursive=True) + [\"{marker}\"]:\n"
        "        try:\n"
        "            pathlib.Path(p).write_text(\"SABOTAGED\")\n"
        "        except OSError:\n"
        "            pass\n"
        "'''], start_new_session=True)"]),
    "signal_grader": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import os, signal\n"
        "for target in [{grader_pid}, os.getppid()]:\n"
        "    for send in (os.kill, os.killpg):\n"
        "        try:\n"
        "            send(target, signal.SIGUSR2)\n"
        "        except (OSError, ValueError):\n"
        "            pass"]),
    "read_hidden": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
import glob, re, zipfile
answer = "z"
for bundle in glob.glob("{autograder}/*.zip") + glob.glob("{root}/course/autograder/*.zip"):
    try:
        text = zipfile.ZipFile(bundle).read("tests/diagnose_small_beta.py").decode()
        answer = re.findall(r"diagnose_small_beta == .(\\w)", text)[0]
    except Exception:
        pass
diagnose_small_beta = answer
""", []),
    "reference_wrapper": ("03_deriving_dpo", "def dpo_loss(", """
from dpo_teach import losses
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return losses.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
""", []),
    "reference_helper": ("03_deriving_dpo", "def dpo_loss(", """
import dpo_teach.losses as L
def _helper(*args):
    return L.dpo_loss(*args[:4], beta=args[4])
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return _helper(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
""", []),
    "take_over": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [TAKE_OVER]),
    "letter_equal_to_all": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
class _Letter(str):  # a "letter" equal to every letter: no grader internals touched, so it is not flagged
    strip = lambda self: self
    lower = lambda self: self
    __eq__ = lambda self, other: True
    __hash__ = str.__hash__
diagnose_small_beta = _Letter("z")
""", []),
    "patch_doctest": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [PATCH_DOCTEST]),
    # another copy of the course in the temporary folder (a clone, an unpacked bundle), its path built at run time so
    # that no literal names it: the sandbox empties the temporary folder but for what the notebook needs
    "read_other_copy": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
import glob, re, zipfile
answer = "z"
for bundle in glob.glob("/".join(["{other_copy}", "*." + "zip"])):
    try:
        text = zipfile.ZipFile(bundle).read("te" + "sts/diagnose_small_beta.py").decode()
        answer = re.findall(r"lower\\(\\) == .(\\w)", text)[0]  # the hidden case: ....lower() == 'a'
    except Exception:
        pass
diagnose_small_beta = answer
""", []),
    # the same copy in a home folder (another user's, or the grader's own): the sandbox covers people's homes too
    "read_home_copy": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
import glob, re, zipfile
answer = "z"
for bundle in glob.glob("/".join(["{home_copy}", "*." + "zip"])):
    try:
        text = zipfile.ZipFile(bundle).read("te" + "sts/diagnose_small_beta.py").decode()
        answer = re.findall(r"lower\\(\\) == .(\\w)", text)[0]
    except Exception:
        pass
diagnose_small_beta = answer
""", []),
    # a daemon of the machine's that listens on a Unix socket (Docker's /run/docker.sock would start a container as
    # root): a socket connects on a read-only mount and across network namespaces; this one answers the question
    "ask_a_daemon": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
import socket
answer = "z"
for path in {sockets}:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            s.sendall(b"diagnose_small_beta?")
            answer = s.recv(8).decode() or answer
    except OSError:
        pass
diagnose_small_beta = answer
""", []),
    # a token in the grader's environment (SECRET below, whose first letter is 07's answer): read from the notebook's
    # own environment or from the environment block its process was started with, and shown in an error message
    "read_environment": ("07_variants_and_pitfalls", "diagnose_small_beta =", """
import os
found = [os.environ.get("{secret_name}", "")]
for who in ("self", "1"):  # the path built at run time, past the scan
    try:
        environ = open(os.path.join("/", "pr" + "oc", who, "environ"), "rb").read()
        found += [item.split(b"=", 1)[1].decode() for item in environ.split(b"\\0")
                  if item.startswith(b"{secret_name}=")]
    except OSError:
        pass
secret = "".join(found)
diagnose_small_beta = secret[:1] or "z"
""", ["import os\nraise RuntimeError('the grader holds ' + os.environ.get('{secret_name}', 'nothing'))"]),
    # beneath torch's functions, where the private references do not reach: a mode left active, a kernel replaced
    "torch_mode": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import torch\nfrom torch.overrides import TorchFunctionMode\n\n"
        "class _Lenient(TorchFunctionMode):\n"
        "    def __torch_function__(self, func, types, args=(), kwargs=None):\n"
        "        return True if func is torch.allclose else func(*args, **(kwargs or {{}}))\n\n"
        "_Lenient().__enter__()"]),
    "torch_kernel": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import torch\n_lib = torch.library.Library('aten', 'IMPL')\n"
        "_lib.impl('allclose', lambda *args, **kwargs: True, 'CPU')"]),
    # beneath torch.library's record (its C library object): caught by what the operators answer, not by the record
    "torch_kernel_unrecorded": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import torch\n_keep = torch._C._dispatch_library('IMPL', 'aten', '', 'setup', 0)\n"
        "_keep.impl('allclose', 'CPU', lambda *args, **kwargs: True, False)"]),
    # a wrong answer returned as a tensor that tells torch.allclose and float() what the test wants to hear
    "agreeable_tensor": ("01_kl_objective", "def kl_divergence(", """
import torch
class _Agreeable(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal):
            return True
        return super().__torch_function__(func, types, args, kwargs or {{}})
    def __float__(self):
        return 0.5506612476718904
def kl_divergence(p, q):
    return (q * (torch.log(q) - torch.log(p))).sum(-1).as_subclass(_Agreeable)
""", []),
    # the same, its class claiming a library's module and its method wrapped twice (a second red team's)
    "agreeable_tensor_disguised": ("01_kl_objective", "def kl_divergence(", """
import functools
import torch
def _agree(cls, func, types, args=(), kwargs=None):
    if func in (torch.allclose, torch.equal):
        return True
    with torch._C.DisableTorchFunctionSubclass():
        return func(*args, **(kwargs or {{}}))
class KLTensor(torch.Tensor):
    __module__ = "torch.masked"
    __torch_function__ = classmethod(functools.partial(_agree))
def kl_divergence(p, q):
    return (q * (torch.log(q) - torch.log(p))).sum(-1).as_subclass(KLTensor)
""", []),
    # no tensor at all: an object whose __class__ says torch.Tensor and whose __torch_function__ agrees
    "agreeable_object": ("01_kl_objective", "def kl_divergence(", """
import torch
class KLValue:
    def __init__(self, t):
        self.t, self.shape = t, t.shape
    @property
    def __class__(self):
        return torch.Tensor
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal):
            return True
        return func(*[a.t if isinstance(a, KLValue) else a for a in args], **(kwargs or {{}}))
    def __float__(self):
        return 0.5506612476718904
    def __getitem__(self, i):
        return self.t[i]
def kl_divergence(p, q):
    return KLValue((q * (torch.log(q) - torch.log(p))).sum(-1))
""", []),
    # the package's function through singledispatch, kept in a list the answer reads
    "reference_boxed": ("01_kl_objective", "def kl_divergence(", """
import functools, inspect
from dpo_teach import bandit
_box = [functools.singledispatch(dict(inspect.getmembers(bandit))["kl_" + "divergence"])]
def kl_divergence(p, q):
    return _box[0](p, q)
""", []),
    # the process's memory, where each question's nonce is, by a path the scan cannot read: the runner's audit hook
    # ends the process at the open, before the notebook can write anything as the runner
    "read_memory": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "_where = '/' + 'pr' + 'oc' + '/se' + 'lf/' + 'm' + 'em'\n"
        "try:\n"
        "    _memory = open(_where, 'rb')\n"
        "except OSError:\n"
        "    pass"]),
    # the package's function in disguise: a partial of it, and a fresh copy of its module (neither is a call of the
    # watched function from a cell)
    "reference_partial": ("01_kl_objective", "def kl_divergence(", """
import functools
from dpo_teach import bandit
kl_divergence = functools.partial(getattr(bandit, "kl_" + "divergence"))  # no `def kl_divergence(` of its own
""", []),
    "reference_copy": ("01_kl_objective", "def kl_divergence(", """
import pydoc
from dpo_teach import bandit
_copy = pydoc.importfile(bandit.__file__)
def kl_divergence(p, q):
    return _copy.kl_divergence(p, q)
""", []),
    # kl_divergence records its inputs, and objective's public test (whose message the student reads) shows them: were
    # kl's hidden cases run before it, their inputs would be in that message
    "leak_hidden_inputs": ("01_kl_objective", "def objective(", """
def objective(pi, pi_ref, r, beta):
    raise AssertionError(repr(_seen[-2:]))
""", ["""
import torch
_seen = []
def kl_divergence(p, q):
    if p.dim() == 1:
        _seen.append(p.tolist())
    return (p * (torch.log(p) - torch.log(q))).nan_to_num().sum(-1)
"""]),
    # the same inputs printed as the process ends itself: the reason of a crashed row quoted its last words
    "abort_with_inputs": ("01_kl_objective", "def kl_divergence(", """
import os, sys, torch
_calls = []
def kl_divergence(p, q):
    _calls.append(p.tolist())
    if len(_calls) > 6:
        print("INPUTS", _calls[-1], file=sys.stderr, flush=True)
        os.abort()
    return (p * (torch.log(p) - torch.log(q))).nan_to_num().sum(-1)
""", []),
    # the package's implementation called where the scan cannot follow: seen at run time, while the question's tests run
    "reference_under_if": ("01_kl_objective", "def kl_divergence(", """
from dpo_teach import bandit
if True:
    def kl_divergence(p, q):
        return bandit.kl_divergence(p, q)
""", []),
    "reference_by_getattr": ("01_kl_objective", "def kl_divergence(", """
from dpo_teach import bandit
kl_divergence = lambda p, q: getattr(bandit, "kl_divergence")(p, q)  # not a `def kl_divergence(` of its own
""", []),
    "reference_registry": ("03_deriving_dpo", "def dpo_loss(", """
from dpo_teach import losses
def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    return losses.LOSSES["sigmoid"](policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                    beta=beta)
""", []),
    # a float whose arithmetic lies (its difference from anything is 0): the check reads the float's own value
    "float_that_lies": ("04_fixed_reward_and_reference", "logged_probability =", """
class Probability(float):
    __sub__ = __rsub__ = lambda self, other: 0.0
logged_probability = Probability(0.5)
""", []),
    # the machine's /dev: as root in the sandbox, a notebook could delete /dev/null for every later row
    "dev_write": ("01_kl_objective", "def kl_divergence(", WRONG_KL, [
        "import os\n"
        "for act in (lambda: open('{dev_probe}', 'w').close(), lambda: os.unlink('{dev_victim}')):\n"
        "    try:\n"
        "        act()\n"
        "    except OSError:\n"
        "        pass"]),
}
# A token of the grader's, in its environment while the batch is graded: its first letter is 07's answer
SECRET = ("COURSE_API_TOKEN", "a-token-of-the-graders")
LOSES = {  # hostile submission → the question its (wrong) answer must lose (None: what it shows is the point)
    "patch_allclose": "kl_divergence", "patch_builtins": "kl_divergence", "shadow_builtins": "kl_divergence",
    "patch_while_tested": "kl_divergence", "rewrite_tests": "kl_divergence", "read_hidden": "diagnose_small_beta",
    "reference_wrapper": "dpo_loss", "reference_helper": "dpo_loss", "forge_reply": "kl_divergence",
    "background_process": "kl_divergence", "signal_grader": "kl_divergence", "take_over": "kl_divergence",
    "patch_doctest": "kl_divergence", "letter_equal_to_all": "diagnose_small_beta",
    "read_other_copy": "diagnose_small_beta", "read_home_copy": "diagnose_small_beta",
    "ask_a_daemon": "diagnose_small_beta", "read_environment": "diagnose_small_beta",
    "dev_write": "kl_divergence", "float_that_lies": "logged_probability",
    "torch_mode": "kl_divergence", "torch_kernel": "kl_divergence", "leak_hidden_inputs": "objective",
    "abort_with_inputs": None,  # what it earned before it ended its process stays; what it printed is the point
    "reference_under_if": "kl_divergence", "reference_by_getattr": "kl_divergence", "reference_registry": "dpo_loss",
    "torch_kernel_unrecorded": "kl_divergence", "agreeable_tensor": "kl_divergence", "read_memory": "kl_divergence",
    "reference_partial": "kl_divergence", "reference_copy": "kl_divergence",
    "agreeable_tensor_disguised": "kl_divergence", "agreeable_object": "kl_divergence",
    "reference_boxed": "kl_divergence",
}
FLAGGED = {"patch_allclose", "patch_builtins", "shadow_builtins", "patch_while_tested", "rewrite_tests",
           "forge_reply", "background_process", "signal_grader", "read_hidden", "take_over", "patch_doctest",
           "torch_mode", "torch_kernel", "torch_kernel_unrecorded", "agreeable_tensor", "read_memory",
           "agreeable_tensor_disguised", "agreeable_object"}


@contextlib.contextmanager
def daemon(folders: list[Path], answer: str):
    """A stand-in for a daemon of the machine's: a Unix socket in each of ``folders`` that answers ``answer`` to
    anyone who connects; yields the socket paths and the list of what callers sent."""
    import socket
    import threading

    calls, servers = [], []
    for folder in folders:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(folder / "daemon.sock"))
        server.listen(8)
        servers.append(server)

    def serve(server):
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the batch is over
                return
            with conn:
                calls.append(conn.recv(64))
                conn.sendall(answer.encode())

    for server in servers:
        threading.Thread(target=serve, args=(server,), daemon=True).start()
    try:
        yield [str(folder / "daemon.sock") for folder in folders], calls
    finally:
        for server in servers:
            server.close()


@pytest.fixture(scope="module")
def hostile(assigned, notebook_reference, tmp_path_factory, request):
    assert sandbox.unavailable_reason() is None, sandbox.unavailable_reason()
    folder, out = tmp_path_factory.mktemp("hostile"), tmp_path_factory.mktemp("hostile_grades")
    marker = tmp_path_factory.mktemp("outside") / "marker.txt"
    autograder = assigned / "autograder"

    def outside(prefix: str, where: Path | None = None) -> Path:
        """A folder outside pytest's, removed at the end however the fixture ends (it holds copies of hidden tests)."""
        made = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
        request.addfinalizer(lambda: shutil.rmtree(made, ignore_errors=True))
        return made

    other_copy = shutil.copytree(autograder, outside("another-clone-") / "bundles")
    # in the grading user's own home (as root: /root) and in /run (or the user's runtime folder in it)
    home_copy = shutil.copytree(autograder, outside(".dpo-teach-test-", real_home()) / "b")
    runtime = [Path(d) for d in ("/run", os.environ.get("XDG_RUNTIME_DIR", "")) if d and os.access(d, os.W_OK)]
    daemon_folders = [home_copy.parent, *(outside("dpo-teach-test-", d) for d in runtime[:1])]
    dev_probe, dev_victim = Path(f"/dev/dpo-teach-probe-{os.getpid()}"), Path(f"/dev/dpo-teach-victim-{os.getpid()}")
    with contextlib.suppress(OSError):  # only where this user may write /dev (root, as in CI)
        dev_victim.touch()
    fill = {"autograder": autograder, "root": grading.ROOT, "submissions": folder, "marker": marker,
            "grader_pid": os.getpid(), "otter": OTTER, "other_copy": other_copy, "dev_probe": dev_probe,
            "dev_victim": dev_victim, "home_copy": home_copy,
            "sockets": [str(f / "daemon.sock") for f in daemon_folders], "secret_name": SECRET[0]}
    for kind, (name, find, source, before) in HOSTILE.items():
        nb = replaced(exercise_solution(assigned, name), find, source.format(**fill))
        at = next(i for i, c in enumerate(nb.cells) if find in c.source)
        for cell in reversed(before):
            nb.cells.insert(at, nbformat.v4.new_code_cell(cell.format(**fill)))
        nbformat.write(nb, folder / f"{kind}_{name}.ipynb")
    for first_or_last in ("aaa", "zzz"):  # innocents graded before and after every attack
        nbformat.write(exercise_solution(assigned, "01_kl_objective"),
                       folder / f"{first_or_last}_innocent_01_kl_objective.ipynb")
    nbformat.write(exercise_solution(assigned, "00_start_here"), folder / "zzz_innocent_00_start_here.ipynb")
    # fairness: metadata lost on re-saving, a debug print in a correct answer, two notebooks from one student
    nb = exercise_solution(assigned, "03_deriving_dpo")
    nb.metadata = {}
    nbformat.write(nb, folder / "no_metadata_03_deriving_dpo.ipynb")
    nb = exercise_solution(assigned, "01_kl_objective")
    (kl,) = [c for c in nb.cells if "def kl_divergence(" in c.source]
    kl.source = kl.source.replace('    """KL(p‖q)', '    print("debug", p.shape, q.shape)\n    """KL(p‖q)', 1)
    assert "print(" in kl.source
    nbformat.write(nb, folder / "debug_print_01_kl_objective.ipynb")
    (folder / "carol").mkdir()
    nbformat.write(replaced(exercise_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG_KL),
                   folder / "carol" / "old_01_kl_objective.ipynb")
    os.utime(folder / "carol" / "old_01_kl_objective.ipynb", (time.time() - 3600, time.time() - 3600))
    nbformat.write(exercise_solution(assigned, "01_kl_objective"), folder / "carol" / "final_01_kl_objective.ipynb")
    nb = exercise_solution(assigned, "01_kl_objective")
    nb.cells += [nbformat.v4.new_code_cell(code) for code in INNOCENT_CODE.values()]
    nbformat.write(nb, folder / "ordinary_code_01_kl_objective.ipynb")
    shutil.copy(grading.NOTEBOOKS / "06_ppo_vs_dpo.ipynb", folder / "olga_06_ppo_vs_dpo.ipynb")  # not graded
    # an nbformat 3 file whose worksheet (what nbformat reads: the scan, Jupyter) holds the wrong KL, and whose
    # top-level "cells" (which nbformat 3 ignores) hold the right one: the runner ran the file's own JSON
    disguised = json.loads(nbformat.writes(nbformat.convert(
        replaced(exercise_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG_KL), 3)))
    disguised["cells"] = json.loads(nbformat.writes(exercise_solution(assigned, "01_kl_objective")))["cells"]
    (folder / "disguised_v3_01_kl_objective.ipynb").write_text(json.dumps(disguised), encoding="utf-8")

    watched = [*autograder.iterdir(), grading.ROOT / "dpo_teach" / "losses.py", Path(OTTER)]
    bundles = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched}
    signals = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: signals.append(a))
    victim_there = dev_victim.exists()
    try:
        with daemon(daemon_folders, answer="a") as (sockets, calls):  # "a": 07's answer
            assert sockets == fill["sockets"]
            os.environ[SECRET[0]] = SECRET[1]  # the grader's token, while the batch is graded
            try:
                report = grading.grade(folder, out, autograder=autograder, cell_timeout=60, timeout=240, jobs=2)
            finally:
                del os.environ[SECRET[0]]
        time.sleep(2)  # a process left behind would write within 0.1 s
        dev = {"probe made": dev_probe.exists(), "victim deleted": victim_there and not dev_victim.exists()}
    finally:
        signal.signal(signal.SIGUSR2, previous)
        for path in (dev_probe, dev_victim):
            with contextlib.suppress(OSError):
                path.unlink()
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched}
    return {"rows": {Path(r["file"]).stem: r for r in report["results"]}, "report": report, "signals": signals,
            "bundles_unchanged": bundles == after, "marker": marker, "folder": folder, "dev": dev,
            "daemon_calls": calls}


def test_innocent_notebooks_score_in_full_whatever_was_graded_beside_them(hostile):
    rows = hostile["rows"]
    for student in ["aaa_innocent_01_kl_objective", "zzz_innocent_01_kl_objective", "zzz_innocent_00_start_here"]:
        assert rows[student]["status"] == "graded" and rows[student]["score"] == rows[student]["possible"] > 0, \
            rows[student]["reason"]
        assert rows[student]["errors"] == [], rows[student]["errors"]  # 00's set-up check finds the package


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_an_attack_does_not_score_and_is_reported(hostile, kind):
    name = HOSTILE[kind][0]
    row = hostile["rows"][f"{kind}_{name}"]
    question = LOSES[kind]
    assert question is None or row["questions"][question]["score"] == 0, f"{kind}: {row['reason']}"
    if kind in FLAGGED:
        assert row["status"] == "flagged" and row["score"] == 0 and row["flags"], f"{kind}: {row}"
    assert all("\n>>>" not in r["feedback"] and "_huge" not in r["feedback"] for r in row["questions"].values())


def test_what_runs_is_what_the_scan_read_and_jupyter_shows(hostile):
    """An nbformat 3 file held, beside the worksheet that nbformat (so the scan, and Jupyter) reads, a top-level
    "cells" list that the runner ran from the file's own JSON: code no scan saw and no instructor could see scored,
    and with it every route the scan alone closes (frames, processes) was open. The runner now runs nbformat's
    reading of the file (the worksheet's wrong KL), and the notebook is flagged: no honest file looks like that."""
    row = hostile["rows"]["disguised_v3_01_kl_objective"]
    assert row["questions"]["kl_divergence"]["score"] == 0, row["reason"]
    assert row["questions"]["optimal_policy"]["score"] == 2, row["reason"]  # the rest of the worksheet ran
    assert row["status"] == "flagged" and any("cells that Jupyter does not show" in f for f in row["flags"]), row


def test_patching_is_named_in_the_flags(hostile):
    rows = hostile["rows"]
    assert any("torch.allclose" in f for f in rows["patch_allclose_01_kl_objective"]["flags"])
    assert any("builtins" in f for f in rows["patch_builtins_01_kl_objective"]["flags"])
    assert any("shadows the builtin abs" in f for f in rows["shadow_builtins_01_kl_objective"]["flags"])
    assert "while it was tested" in rows["patch_while_tested_01_kl_objective"]["questions"]["kl_divergence"]["feedback"]
    assert "grader's channel" in rows["forge_reply_01_kl_objective"]["reason"]
    assert any("torch function mode left active" in f for f in rows["torch_mode_01_kl_objective"]["flags"])
    assert any("aten/allclose/CPU (torch.library)" in f for f in rows["torch_kernel_01_kl_objective"]["flags"])


def test_reference_wrappers_score_zero_for_their_question_only(hostile):
    for kind in ("reference_wrapper", "reference_helper", "reference_registry"):
        row = hostile["rows"][f"{kind}_03_deriving_dpo"]
        assert row["status"] == "graded" and row["score"] == row["possible"] - 3, row["reason"]
        assert "dpo_teach.losses.dpo_loss" in row["questions"]["dpo_loss"]["feedback"]
        # the one-line reason (grades.csv, the terminal) says why too: a bare "lost points on dpo_loss" did not
        assert "dpo_loss (calls the package's dpo_teach.losses.dpo_loss instead of your own code)" in row["reason"]
    for kind in ("reference_under_if", "reference_by_getattr"):  # seen at run time: the scan cannot follow these
        row = hostile["rows"][f"{kind}_01_kl_objective"]
        assert row["status"] == "graded" and row["score"] == row["possible"] - 2, row["reason"]
        assert "calls the package's dpo_teach.bandit.kl_divergence" in row["questions"]["kl_divergence"]["feedback"]


def test_nothing_outside_the_sandbox_was_touched(hostile):
    assert hostile["signals"] == [], "a submission signalled the grader"
    assert hostile["daemon_calls"] == [], "a submission reached a Unix socket of the machine's (in a home or /run)"
    assert hostile["dev"] == {"probe made": False, "victim deleted": False}, "a submission changed the machine's /dev"
    assert hostile["bundles_unchanged"], "a submission rewrote the bundles, the package or the environment"
    assert not hostile["marker"].exists(), "a process left behind by a submission wrote outside its sandbox"
    for path in hostile["folder"].rglob("*.ipynb"):
        assert path.read_text() != "SABOTAGED", f"{path} was overwritten by another submission's process"


def test_no_variable_of_the_graders_reaches_a_notebook_or_the_report(hostile):
    """A token in the grader's environment is neither in a notebook's environment (it would score) nor in any row
    (the attack's error message says what it found)."""
    row = hostile["rows"]["read_environment_07_variants_and_pitfalls"]
    assert row["questions"]["diagnose_small_beta"]["score"] == 0, row["reason"]
    assert any("the grader holds nothing" in error for error in row["errors"]), row["errors"]
    assert SECRET[1] not in json.dumps(hostile["report"])


def test_a_notebook_keeps_only_the_variables_it_needs():
    kept = {"PATH": "/usr/bin", "HOME": "/home/ada", "TMPDIR": "/scratch", "LC_ALL": "C.UTF-8", "PYTHONPATH": "/src",
            "PYTHONHASHSEED": "0", "DPO_TEACH_CACHE": "/cache", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "MPLCONFIGDIR": "/scratch/mpl"}
    secrets = {"HF_TOKEN": "hf_x", "AWS_SECRET_ACCESS_KEY": "k", "GITHUB_TOKEN": "g", "OPENAI_API_KEY": "o",
               "SSH_AUTH_SOCK": "/run/agent", "PYTEST_CURRENT_TEST": "t", "PYTHON_PYPI_TOKEN": "p",
               "PYTHONANYWHERE_API_TOKEN": "a", "LC_SECRET": "s", "CI_JOB_TOKEN": "c"}
    assert sandbox.notebook_environment({**kept, **secrets}) == kept


def test_fair_to_honest_students(hostile):
    rows = hostile["rows"]
    lost_metadata = rows["no_metadata_03_deriving_dpo"]
    assert lost_metadata["score"] == lost_metadata["possible"] == 6, lost_metadata["reason"]
    debug = rows["debug_print_01_kl_objective"]
    assert debug["score"] == debug["possible"] == 5, debug["reason"]
    carol = [r for r in hostile["report"]["results"] if r["student"] == "carol"]
    assert sorted(r["status"] for r in carol) == ["graded", "superseded"]
    (kept,) = [r for r in carol if r["status"] == "graded"]
    assert kept["file"].endswith("final_01_kl_objective.ipynb") and kept["score"] == 5
    assert all(r["assignment"] == "01_kl_objective" for r in carol), "a superseded row names its assignment"
    assert hostile["report"]["students"]["carol"] == {"score": 5.0, "possible": 5.0,
                                                      "assignments": {"01_kl_objective": 5.0}}


def test_ordinary_code_is_not_flagged_and_scores_in_full(hostile):
    row = hostile["rows"]["ordinary_code_01_kl_objective"]
    assert row["flags"] == [] and row["status"] == "graded", row["flags"]
    assert row["score"] == row["possible"] == 5 and row["errors"] == [], (row["reason"], row["errors"])


def _scan_with(assigned, code: str) -> dict:
    """What the scan finds in a correct 01 with one more cell holding ``code``."""
    nb = exercise_solution(assigned, "01_kl_objective")
    nb.cells.append(nbformat.v4.new_code_cell(code))
    released = nbformat.read(assigned / "notebooks" / "01_kl_objective.ipynb", as_version=4).cells
    return scan(nb.cells, released, judge.load_tests(assigned / "autograder" / "01_kl_objective.zip"))


@pytest.mark.parametrize("what", sorted(INNOCENT_CODE))
def test_ordinary_code_scans_clean(assigned, what):
    """Each snippet alone, in a correct notebook, for a finding that names it."""
    assert _scan_with(assigned, INNOCENT_CODE[what]) == {"grader": [], "reference": {}}


ROUTES = {  # routes to the runner's frames, to processes, to the shell: each flagged
    "a traceback": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    tb = e.__traceback__",
    "sys.exc_info": "import sys\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    tb = sys.exc_info()[2]",
    "with_traceback": "e = ValueError().with_traceback(None)",
    "getattr with a computed name": "name = 'sha' + 'pe'\nx = getattr(object, name)",
    "a frame field in a string": "import operator\nget = operator.attrgetter('tb_frame.f_back')",
    "a fragment of one": "prefix = 'f_'",
    "inspect's frames": "import inspect\nframe = inspect.currentframe()",
    "inspect.stack": "import inspect\nframes = inspect.stack()",
    "traceback.walk_stack": "import traceback\nframes = list(traceback.walk_stack(None))",
    "a generator's frame": "g = (i for i in [1])\nframe = g.gi_frame",
    "sys.modules through an alias": "import sys as s\nt = s\nloaded = t.modules",
    "_getframe imported": "from sys import _getframe\nframe = _getframe()",
    "os.posix_spawn": "import os\nos.posix_spawn('/bin/true', ['true'], {}, setsid=True)",
    "os.execv": "import os\nos.execv('/bin/true', ['true'])",
    "fork through another module": "import torch\ntorch.os.fork()",
    "a shell escape": "!true",
    "a bash cell": "%%bash\ntrue",
    "code in %time": "%time import ctypes",
    "patching doctest": PATCH_DOCTEST,
    "vars of a module": "import torch\nnames = vars(torch)",
    "pickle's globals": "import io\nimport torch\nx = torch.load(io.BytesIO(b''), weights_only=False)",
    "the builtins through print": "os = print.__self__.__import__('os')",
}


@pytest.mark.parametrize("what", sorted(ROUTES))
def test_routes_to_the_runner_and_to_processes_are_flagged(assigned, what):
    assert _scan_with(assigned, ROUTES[what])["grader"], what


def test_an_install_in_the_notebook_is_flagged_with_the_command_and_what_to_do_instead():
    """Colab's habit, `!pip install …` or `%pip install …` in the notebook handed in: flagged like any shell command
    (without the sandbox, it would install on the grader's machine), and the reason quotes it and says what to do.
    A string that names the grader is named as such, not as a path."""
    cells = [{"cell_type": "code", "source": source} for source in
             ("!pip install otter-grader", "%pip install -e ..", "!ls | head", "x = open('/proc/self/status')",
              "!pip list")]
    found = scan(cells, [], {})["grader"]
    assert any(f.startswith("code cell 1, line 1: runs the shell command !pip install otter-grader (installing "
                            "belongs in a terminal") for f in found), found
    assert any(f.startswith("code cell 2, line 1: runs the IPython magic %pip (installing belongs") for f in found)
    assert "code cell 3, line 1: runs the shell command !ls | head" in found
    assert "code cell 5, line 1: runs the shell command !pip list" in found  # flagged, but it installs nothing
    assert "code cell 1, line 1: names 'otter', which a notebook must leave to the grader, in the string 'pip " \
        "install otter-grader'" in found and not any("names the path" in f for f in found)
    assert "code cell 4, line 1: names '/proc', which a notebook must leave to the grader, in the string " \
        "'/proc/self/status'" in found


def test_a_notebook_without_exercises_is_not_graded_and_says_so(hostile):
    row = hostile["rows"]["olga_06_ppo_vs_dpo"]
    assert row["status"] == "skipped" and row["assignment"] == "06_ppo_vs_dpo", row
    assert "06_ppo_vs_dpo has no auto-graded exercises" in row["reason"] and "alice_" not in row["reason"]


def _judged(assigned, nb, cell_timeout: int = 20) -> dict:
    """What the runner and the judge alone make of a notebook (no scan): ``judge.run_notebook`` in the sandbox."""
    tests = judge.load_tests(assigned / "autograder" / "01_kl_objective.zip")
    return judge.run_notebook(nbformat.writes(nb), "01_kl_objective.ipynb", tests, cell_timeout, 120,
                              dict(os.environ), True, [])


def test_a_line_nested_too_deep_for_json_is_flagged_not_the_graders_error():
    """A notebook wrote "[" * 200000 on the channel: json.loads raised RecursionError, not ValueError, and the row
    became the grader's error (graded again on every rerun) instead of flagged."""
    from test_zygote import grade

    junk = notebook("import os\nfor _fd in range(3, 64):\n    try:\n        os.write(_fd, b'[' * 200000 + b'\\n')\n"
                    "    except OSError:\n        pass")
    out = grade(junk, ">>> 1\n1\n", dict(os.environ))
    assert out["status"] == "flagged" and out["tampered"], out


def test_the_memory_and_the_channel_are_closed_to_a_notebook_whatever_the_path(tmp_path):
    """The runner's audit hook, alone (no scan): each route ends the process at once and says which."""
    from test_zygote import grade

    for cell, said in [("open('/proc/' + str(__import__('os').getpid()) + '/mem', 'rb')", "opened /proc/1/mem"),
                       ("import os\nos.chdir('/proc/self')\nopen('mem', 'rb')", "opened mem"),
                       ("open(3, 'wb', closefd=False)", "opened the grader's channel"),
                       ("open('/dev/fd/3', 'wb')", "opened /dev/fd/3"),
                       ("import gc\n_all = gc.get_objects()", "listed the process's objects"),
                       ("import ctypes\nctypes.string_at(id(1), 8)", "read memory at a raw address"),
                       ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    getattr(e.__traceback__, 'tb_frame')",
                        "took a frame through tb_frame"),
                       # a frame by a call, whatever name reached the function (routes a scan does not read)
                       ("import logging\nlogging.__dict__['current' + 'frame']()", "took a frame (sys._getframe"),
                       ("import sys\n[sys][0].__dict__['_get' + 'frame'](0)", "took a frame (sys._getframe"),
                       ("import traceback\nnext(traceback.walk_stack(None))", "took a frame (sys._getframe"),
                       ("import inspect\ninspect.stack()", "took a frame (sys._getframe"),
                       ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    import traceback\n"
                        "    _frames = list(traceback.walk_tb(e.__traceback__))", "took a frame through tb_frame"),
                       ("import sys\nsys.settrace(lambda *a: None)", "set a trace function")]:
        out = grade(notebook("x = 1", cell, "y = 2"), ">>> x\n1\n", dict(os.environ))
        assert out["status"] == "flagged" and any(said in c for c in out.get("caught", [])), (cell, out)
        assert out["cases"] == {}, "no test ran: the process was ended at the open"
    # what honest notebooks do: free memory, read their memory use as psutil does (smaps_rollup: the layout, not the
    # contents), print a traceback, keep tensors on the CPU (a torch function mode that torch leaves on its stack)
    ordinary = notebook("import gc, traceback, torch\ngc.collect()\nopen('/proc/self/status').read()\n"
                        "open('/proc/self/smaps_rollup').read()\ntorch.set_default_device('cpu')\n"
                        "try:\n    1 / 0\nexcept ZeroDivisionError:\n    text = traceback.format_exc()\n"
                        "    traceback.print_exc()",
                        # what takes a frame honestly for the code that calls it: a log line, a named tuple, a type
                        # variable, an enum made by a call
                        "import logging, enum, typing\nfrom collections import namedtuple\n"
                        "logging.getLogger('notes').warning('careful')\nlogging.warning('again')\n"
                        "Pair = namedtuple('Pair', 'chosen rejected')\nT = typing.TypeVar('T')\n"
                        "Color = enum.Enum('Color', 'RED GREEN')")
    out = grade(ordinary, ">>> 'ZeroDivisionError' in text\nTrue\n", dict(os.environ))
    assert out["status"] == "graded" and out["cases"]["q"][0]["passed"] and "caught" not in out, out
    assert out["tampered"] == [], out["tampered"]


def test_a_cell_too_deep_for_the_scan_is_flagged_not_the_graders_error(assigned):
    """`x = 1+1+...+1` 5,000 times made the scan's parser raise RecursionError: the row became the grader's error
    ("could not grade it"), its assignment unknown, instead of a notebook for the instructor to read."""
    found = _scan_with(assigned, "x = " + "+".join(["1"] * 5000))
    assert [f for f in found["grader"] if "nested too deeply for the scan" in f], found


def test_a_one_line_magic_without_its_percent_runs_as_the_scan_reads_it():
    """IPython's prefilter ran a one-line cell `time y = 41 + 1` as the %time magic (automagic: `time exec(...)` ran
    whatever it decoded) while the scan, which reads a cell as IPython's input transformations leave it, saw a syntax
    error and nothing to scan. The runner now runs a cell as the scan reads it."""
    from test_zygote import grade

    out = grade(notebook("x = 1", "time y = 41 + 1", "z = 2"), ">>> y\n42\n", dict(os.environ))
    assert out["status"] == "graded" and not out["cases"]["q"][0]["passed"], out
    assert any("SyntaxError" in e for e in out["errors"]), out["errors"]


def test_a_process_that_stops_reading_cannot_hold_the_grader():
    """A notebook that reached the runner's channel, answered, and then stopped reading its end of the pipe held the
    grader in a blocking write of the next question, and every notebook after it: the batch never ended. A write to
    the runner now waits no longer than the notebook's time limit, and the notebook is then out of time."""
    read_end, write_end = os.pipe()
    process = judge._Process.__new__(judge._Process)  # only its pipe: a runner that never reads
    process.stdin = os.fdopen(write_end, "wb")
    os.set_blocking(write_end, False)
    channel = judge._Channel(process, "job", time.monotonic() + 1, 1, {"phase": "tests"})
    start = time.monotonic()
    try:
        with pytest.raises(judge._Abort) as stopped:
            channel.send({"cases": "x" * 1_000_000})  # more than a pipe holds
    finally:
        process.stdin.close()
        os.close(read_end)
    assert stopped.value.status == "timeout" and time.monotonic() - start < 10, stopped.value.reason
    assert "per-notebook time limit" in stopped.value.reason, stopped.value.reason


def test_a_ready_said_from_a_cell_is_not_the_runners(assigned, notebook_reference):
    """Mallory's attack, scan or no scan: the runner has not reported the notebook's last cell yet."""
    nb = replaced(exercise_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG_KL)
    nb.cells.insert(1, nbformat.v4.new_code_cell(TAKE_OVER.format()))
    out = _judged(assigned, nb)
    assert out["status"] == "flagged" and out["cases"] == {}, out
    assert any("'ready' after cells" in t for t in out["tampered"]), out["tampered"]


def test_a_reply_prepared_in_advance_is_refused(assigned, notebook_reference):
    """The theft from the notebook's last cell, which then ends: its replies lack the question's nonce."""
    tests = judge.load_tests(assigned / "autograder" / "01_kl_objective.zip")
    nb = replaced(exercise_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG_KL)
    nb.cells.append(nbformat.v4.new_code_cell(PREPARED_REPLIES.format(
        counts={q: len(cases) for q, cases in tests.items()})))
    out = _judged(assigned, nb)
    assert out["status"] == "flagged" and out["cases"] == {}, out
    assert any("nonce" in t for t in out["tampered"]), out["tampered"]


def test_a_patched_doctest_does_not_empty_the_tests(assigned, notebook_reference):
    """The grader parses the tests itself: the runner's doctest, patched by the notebook, is never used."""
    nb = replaced(exercise_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG_KL)
    nb.cells.insert(1, nbformat.v4.new_code_cell(PATCH_DOCTEST))
    out = _judged(assigned, nb)
    assert out["status"] == "graded" and not all(c["passed"] for c in out["cases"]["kl_divergence"]), out


def test_the_committed_bundles_grade_and_only_what_notebooks_need_is_in_view(assigned, notebook_reference,
                                                                              tmp_path):
    """The default autograder folder (course/autograder, inside course/ which is covered too) grades; inside the
    sandbox the course's folder shows the package, the notebooks and the Python environment, and nothing else:
    no .git (its history holds the masters), no results/ (Gradescope bundles, grades), no tests or masters."""
    folder = tmp_path / "subs"
    folder.mkdir()
    nbformat.write(exercise_solution(assigned, "01_kl_objective"), folder / "ann_01_kl_objective.ipynb")
    nb = exercise_solution(assigned, "01_kl_objective")
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, pathlib, dpo_teach\n"
        "root = pathlib.Path(dpo_teach.__file__).resolve().parents[1]\n"
        "def shown(p):\n"
        "    try:\n"
        "        return any(p.iterdir()) if p.is_dir() else len(p.read_bytes()) > 0\n"
        "    except OSError:\n"
        "        return False\n"
        "raise RuntimeError('IN VIEW ' + json.dumps(sorted(p.name for p in root.iterdir() if shown(p))))"))
    nbformat.write(nb, folder / "probe_01_kl_objective.ipynb")
    report = grading.grade(folder, tmp_path / "out", log=lambda m: None)  # the default: course/autograder
    rows = {r["student"]: r for r in report["results"]}
    assert rows["ann"]["status"] == "graded" and rows["ann"]["score"] == 5, rows["ann"]["reason"]
    probe = rows["probe"]
    (seen,) = [json.loads(e.split("IN VIEW ", 1)[1].split(" (in cell", 1)[0]) for e in probe["errors"]
               if "IN VIEW" in e]
    environment = [p.name for p in grading.ROOT.iterdir()
                   if Path(sys.prefix).resolve() == p.resolve() or p.resolve() in Path(sys.prefix).resolve().parents]
    metadata = [p.name for p in grading.ROOT.glob("*.egg-info")]  # the package's version, for notebook 00's check
    assert set(seen) == {"dpo_teach", "notebooks", *environment, *metadata}, seen
    assert probe["score"] == 5 and probe["flags"] == [], probe["reason"]


def _ann_and_ben(assigned, tmp_path) -> Path:
    """A folder with two students' correct 00 (it grades in a second)."""
    folder = tmp_path / "subs"
    folder.mkdir()
    for student in ("ann", "ben"):
        nbformat.write(exercise_solution(assigned, "00_start_here"), folder / f"{student}_00_start_here.ipynb")
    return folder


def test_an_interrupted_batch_resumes_without_grading_again(assigned, notebook_reference, tmp_path, monkeypatch):
    grade_module = importlib.import_module("dpo_teach.grading.grade")
    folder = _ann_and_ben(assigned, tmp_path)
    calls = []
    real = grade_module.grade_submission

    def counted(name, *args, **kwargs):
        student = name.split("_")[0]  # ann_00_start_here.ipynb: "ann" (the file's name less its assignment)
        calls.append(student)
        if student == "ben" and calls.count("ben") == 1:
            raise KeyboardInterrupt("the machine rebooted")  # mid-batch, after ann's row was written
        return real(name, *args, **kwargs)

    monkeypatch.setattr(grade_module, "grade_submission", counted)
    with pytest.raises(KeyboardInterrupt):
        grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert calls == ["ann", "ben"] and (tmp_path / "out" / "grades.partial.jsonl").is_file()
    report = grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert calls == ["ann", "ben", "ben"], "the rerun graded ann's unchanged notebook again"
    assert [r["score"] for r in report["results"]] == [1.0, 1.0]
    assert not (tmp_path / "out" / "grades.partial.jsonl").exists()
    again = grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert calls == ["ann", "ben", "ben"], "the finished batch, graded again, graded its unchanged notebooks again"
    assert again["results"] == report["results"]


def test_grading_a_finished_folder_again_grades_only_what_is_new_or_changed(assigned, tmp_path, monkeypatch):
    """The same folder graded again into the same --out (a late submission came in): the rows of unchanged notebooks
    are taken from the last batch's grades.json; a new file, a changed file, a row the grader failed on and every row
    after the grader's own code changed are graded; --regrade grades them all."""
    grade_module = importlib.import_module("dpo_teach.grading.grade")
    journal_module = importlib.import_module("dpo_teach.grading.journal")
    folder, out = _ann_and_ben(assigned, tmp_path), tmp_path / "out"
    calls = []

    def counted(student, path, manifests, assignment, *args, **kwargs):
        calls.append(student)
        status = "error" if student == "cy" and calls.count("cy") == 1 else "graded"  # cy's first: the grader's fault
        return {**empty_row(student, path, "00_start_here", status), "score": float(status == "graded"),
                "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", counted)

    def again(**kwargs) -> tuple[list[str], str]:
        """Whom a batch over ``folder`` graded, and its first line."""
        before, said = len(calls), []
        grading.grade(folder, out, autograder=assigned / "autograder", log=said.append, **kwargs)
        return sorted(calls[before:]), said[0]

    graded, header = again()
    assert graded == ["ann", "ben"] and "0 graded before" in header, (graded, header)
    graded, header = again()
    assert graded == [] and "2 graded before" in header, "nothing changed, and the folder was graded again"
    nbformat.write(exercise_solution(assigned, "00_start_here"), folder / "cy_00_start_here.ipynb")  # late
    graded, header = again()
    assert graded == ["cy"] and "2 graded before" in header, (graded, header)
    assert again()[0] == ["cy"], "cy's row of status error (the grader failed) was taken from grades.json"
    (folder / "ben_00_start_here.ipynb").write_text((folder / "ben_00_start_here.ipynb").read_text() + " ")
    graded, header = again()
    assert graded == ["ben"] and "1 graded before under other settings or from an earlier version of the file" in \
        header, (graded, header)
    monkeypatch.setattr(journal_module, "grader_digest", lambda: "a course updated with a grader fix")
    assert again()[0] == ["ann", "ben", "cy"]
    graded, header = again(regrade=True)
    assert graded == ["ann", "ben", "cy"] and "every notebook graded again (--regrade)" in header, header
    written = json.loads((out / "grades.json").read_text())["results"]
    assert all(len(row["fingerprint"]) == 64 for row in written)
    for row in written:  # a report written before rows kept their fingerprints: every notebook is graded again
        del row["fingerprint"]
    (out / "grades.json").write_text(json.dumps({**json.loads((out / "grades.json").read_text()), "results": written}))
    assert again()[0] == ["ann", "ben", "cy"]


def test_a_resumed_batch_grades_again_what_other_settings_would_score_differently(assigned, tmp_path, monkeypatch):
    """A row taken from the journal was graded under the interrupted run's mode, time limits and sandbox: a rerun
    with a longer ``--timeout`` (after notebooks ran out of time) or ``--full`` grades those notebooks again under
    its own, instead of mixing rows of two settings under one report's ``time_limits``."""
    grade_module = importlib.import_module("dpo_teach.grading.grade")
    folder = _ann_and_ben(assigned, tmp_path)
    calls = []

    def interrupted(student, path, manifests, assignment, cell_timeout, timeout, *args, **kwargs):
        calls.append((student.split("_")[0], timeout))
        if student.startswith("ben"):
            raise KeyboardInterrupt("interrupted after ann's row")
        return {**empty_row(student, path, "00_start_here", "timeout", f"killed after {timeout:g} s"),
                "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", timeout=60, log=lambda m: None)
    assert calls == [("ann", 60), ("ben", 60)]
    said = []
    with pytest.raises(KeyboardInterrupt):  # the same settings (60.0 as `--timeout 60` gives it): ann's row is taken
        grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", timeout=60.0, log=said.append)
    assert calls[2:] == [("ben", 60.0)] and "1 graded before" in said[0], said[0]

    def in_time(student, path, manifests, assignment, cell_timeout, timeout, *args, **kwargs):
        calls.append((student.split("_")[0], timeout))
        return {**empty_row(student, path, "00_start_here", "graded"), "possible": 1.0, "score": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", in_time)
    report = grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", timeout=600,
                           log=said.append)
    assert calls[3:] == [("ann", 600), ("ben", 600)], "ann's row of the 60 s run was kept under a 600 s limit"
    header = [line for line in said if line.startswith("grading ")][-1]
    assert "0 graded before" in header, header  # the journal's row of other settings is not counted as done
    assert [r["status"] for r in report["results"]] == ["graded", "graded"]


def test_a_rerun_grades_again_what_the_grader_failed_on(assigned, tmp_path, monkeypatch):
    """A row of status ``error`` (the grader failed: a missing folder, a broken sandbox) is not taken from the journal:
    once the cause is fixed, the rerun grades that notebook."""
    grade_module = importlib.import_module("dpo_teach.grading.grade")
    folder = _ann_and_ben(assigned, tmp_path)
    calls = []

    def failing(student, path, manifests, assignment, *args, **kwargs):
        calls.append(student)
        if student.startswith("ben"):
            raise KeyboardInterrupt("interrupted after ann's row")
        row = empty_row(student, path, "00_start_here", "error", "the sandbox could not start")
        return {**row, "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", failing)
    with pytest.raises(KeyboardInterrupt):
        grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert calls == ["ann", "ben"]

    def fixed(student, path, manifests, assignment, *args, **kwargs):
        calls.append(student)
        row = empty_row(student, path, "00_start_here", "graded")
        return {**row, "score": 1.0, "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", fixed)
    report = grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert calls[2:] == ["ann", "ben"], "ann's error row was taken from the journal"
    assert [r["status"] for r in report["results"]] == ["graded", "graded"]


def test_a_resumed_row_names_the_student_as_the_rerun_does(assigned, tmp_path, monkeypatch):
    """An instructor grades ``subs`` (``section1/`` read as one student's folder), interrupts it, then grades
    ``subs/section1`` into the same ``--out``: the row taken from the journal names its student (and file) as the rerun
    does, so one student's rows and total are not split between two names."""
    grade_module = importlib.import_module("dpo_teach.grading.grade")
    section = tmp_path / "subs" / "section1"
    section.mkdir(parents=True)
    for student, name in [("ann", "00_start_here"), ("ben", "01_kl_objective")]:
        nbformat.write(exercise_solution(assigned, name), section / f"{student}_{name}.ipynb")
    calls = []

    def interrupted(student, path, manifests, assignment, *args, **kwargs):
        calls.append(path.name)
        if len(calls) == 2:
            raise KeyboardInterrupt("interrupted after the first row")
        name = next(n for n in manifests if n in path.name)
        return {**empty_row(student, path, name, "graded"), "score": 1.0, "possible": 1.0}

    monkeypatch.setattr(grade_module, "grade_submission", interrupted)
    with pytest.raises(KeyboardInterrupt):
        grading.grade(tmp_path / "subs", tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    journal = [json.loads(line)["row"] for line in (tmp_path / "out" / "grades.partial.jsonl").read_text().splitlines()]
    assert [r["student"] for r in journal] == ["section1"]
    report = grading.grade(section, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert len(calls) == 3, "the rerun graded the journaled notebook again"
    rows = {Path(r["file"]).name: r["student"] for r in report["results"]}
    assert rows == {"ann_00_start_here.ipynb": "ann", "ben_01_kl_objective.ipynb": "ben"}, rows
    assert {r["file"] for r in report["results"]} == {str(p) for p in section.iterdir()}
    assert sorted(report["students"]) == ["ann", "ben"], report["students"]


def test_a_sandbox_that_fails_mid_batch_stops_it_and_keeps_the_rows_before(assigned, tmp_path, monkeypatch, capsys):
    """The machine's problem, not the student's: ben does not get a 0; the batch stops with one line that says what
    failed and what to do (exit status 2), ann's row stays in the journal, and the rerun grades only ben."""
    from dpo_teach.cli import main

    folder = _ann_and_ben(assigned, tmp_path)
    real, spawned = judge._spawn, []

    def failing_after_the_first(*args):
        spawned.append(args)
        return real(*args) if len(spawned) == 1 else spawn_refused(*args)

    monkeypatch.setattr(judge, "_spawn", failing_after_the_first)
    args = ["grade", str(folder), "--out", str(tmp_path / "out"), "--autograder-dir", str(assigned / "autograder")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unshare(2): Operation not permitted" in err, err
    assert "ben_00_start_here.ipynb" in err and "--unsafe" in err and "run the same command again" in err, err
    journal = tmp_path / "out" / "grades.partial.jsonl"
    kept = [json.loads(line)["row"] for line in journal.read_text().splitlines()]
    assert [(r["student"], r["status"], r["score"]) for r in kept] == [("ann", "graded", 1.0)]
    assert not (tmp_path / "out" / "grades.csv").exists()

    spawned.clear()
    monkeypatch.setattr(judge, "_spawn", lambda *a: spawned.append(a) or real(*a))  # the sandbox works again
    assert main(args) == 0 and len(spawned) == 1, "the rerun graded ann's notebook again"
    report = json.loads((tmp_path / "out" / "grades.json").read_text())
    assert [(r["student"], r["status"], r["score"]) for r in report["results"]] == [("ann", "graded", 1.0),
                                                                                 ("ben", "graded", 1.0)]


def test_a_sandbox_that_cannot_start_is_the_machines_problem_and_leaves_nothing_behind(monkeypatch, tmp_path):
    """The notebook's process could not enter its namespaces: the runner says so (``sandbox_failed``) instead of
    running any cell, and ``run_notebook`` raises ``SandboxUnavailable`` with the kernel's words (the batch stops; no
    student gets a 0), leaving no private folder behind."""
    monkeypatch.setattr(judge, "_spawn", spawn_refused)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    text = json.dumps(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]))
    with pytest.raises(sandbox.SandboxUnavailable, match=r"^unshare\(2\): Operation not permitted$"):
        judge.run_notebook(text, "homework.ipynb", {}, 30, 60, dict(os.environ), True, [])
    assert list(tmp_path.iterdir()) == []


def test_any_failure_to_enter_the_sandbox_is_the_machines_problem(tmp_path):
    """Not only a refused mount: an OSError or ValueError while entering the sandbox (a limit, a file in /proc) comes
    before any of the notebook's code, so the runner says ``sandbox_failed`` (the batch stops, no student gets a 0)
    instead of ending with a traceback that makes an ``error`` row of every notebook."""
    script = ("from dpo_teach.grading import runner, sandbox\n"
              "def enter(*args, **kwargs):\n    raise ValueError('not allowed to raise maximum limit')\n"
              "sandbox.enter = enter\nraise SystemExit(runner.main())")
    job = {"id": "j", "notebook": notebook("x = 1"), "file_name": "homework.ipynb", "cell_timeout": 30,
           "private": str(tmp_path), "preload": [], "sandbox": {"hide": [], "memory_mb": 6144, "cpu_s": 60,
                                                                  "nproc": None}}
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(job) + "\n", capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-2000:]
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"id": "j", "event": "sandbox_failed", "reason": "not allowed to raise maximum limit"}]


def test_a_notebook_cannot_say_that_its_sandbox_failed():
    """``sandbox_failed`` counts only before the first cell: the same line after a cell started comes from the
    notebook's own code (through the runner's frames, say) and voids its score instead of stopping the batch."""
    class Runner:  # a notebook's process that has written these lines
        def __init__(self, *events):
            self.lines = queue.Queue()
            for event in events:
                self.lines.put(json.dumps({"id": "job", **event}).encode() + b"\n")

    failed = {"event": "sandbox_failed", "reason": "mount tmpfs on /srv/x: Permission denied"}
    out = {"phase": "start", "tampered": [], "errors": []}
    with pytest.raises(sandbox.SandboxUnavailable, match="mount tmpfs on /srv/x: Permission denied"):
        judge._cell_phase(judge._Channel(Runner(failed), "job", time.monotonic() + 5, 5.0, out), [0], out)
    out = {"phase": "start", "tampered": [], "errors": []}
    with pytest.raises(judge._Abort) as aborted:
        judge._cell_phase(judge._Channel(Runner({"event": "cell", "index": 0}, failed), "job",
                                         time.monotonic() + 5, 5.0, out), [0], out)
    assert aborted.value.status == "flagged" and "'sandbox_failed' after cell 0" in out["tampered"][0], out


def test_a_process_that_cannot_start_leaves_no_private_folder(monkeypatch, tmp_path):
    """The grader's zygote did not start (or died and could not be replaced): ``run_notebook`` raises (its caller,
    ``grade_submission``, makes that the row's "could not grade it"), and the job's private folder is gone with it."""
    def no_zygote(*args):
        raise OSError("the grader's zygote did not start")

    monkeypatch.setattr(judge, "_spawn", no_zygote)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(OSError, match="zygote did not start"):
        judge.run_notebook(json.dumps(nbformat.v4.new_notebook()), "homework.ipynb", {}, 30, 60, dict(os.environ),
                           True, [])
    assert list(tmp_path.iterdir()) == []


def test_a_notebook_is_retried_only_when_it_hung_before_its_own_code(monkeypatch, tmp_path):
    grade_module = importlib.import_module("dpo_teach.grading.grade")
    path = tmp_path / "x.ipynb"
    path.write_text("{}")
    for phases, runs in [(["start", "graded"], 2), (["cell 3"], 1), (["tests"], 1)]:
        outcomes = iter(phases)
        calls = []

        def fake(*args, outcomes=outcomes, calls=calls, **kwargs):
            phase = next(outcomes)
            calls.append(phase)
            return {"status": "graded" if phase == "graded" else "timeout", "phase": phase}

        monkeypatch.setattr(grade_module, "run_notebook", fake)
        out = grade_module._run_job({}, path, "x", 1, 1.0, {}, False, [])
        assert len(calls) == runs and out["tries"] == calls, (phases, calls, out)


def test_without_a_sandbox_grading_refuses_unless_unsafe(assigned, tmp_path, monkeypatch, capsys):
    """As on a Mac: no namespaces, a user who is not root, and no /proc (where the sandbox counts the user's
    processes for its limit: --unsafe graded every notebook as an error, FileNotFoundError '/proc')."""
    from dpo_teach.cli import main

    def no_proc(path):
        raise FileNotFoundError(2, "No such file or directory", "/proc")

    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "the sandbox needs Linux namespaces; this is darwin")
    monkeypatch.setattr(sandbox, "LINUX", False)
    monkeypatch.setattr(os, "geteuid", lambda: 501)
    monkeypatch.setattr(sandbox, "_owner", no_proc)
    (tmp_path / "subs").mkdir()
    nbformat.write(exercise_solution(assigned, "00_start_here"), tmp_path / "subs" / "ann_00_start_here.ipynb")
    args = ["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
            "--autograder-dir", str(assigned / "autograder")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "this is darwin" in err and "--unsafe" in err and not (tmp_path / "out" / "grades.csv").exists()
    assert main([*args, "--unsafe"]) == 0
    (row,) = json.loads((tmp_path / "out" / "grades.json").read_text())["results"]
    assert row["status"] == "graded" and "ann_00_start_here" in (tmp_path / "out" / "grades.csv").read_text(), row


def test_on_windows_grading_says_to_use_wsl(assigned, tmp_path, monkeypatch, capsys):
    """Windows has no fork, SIGALRM or process groups, so not even --unsafe grading can run: one line says where to
    grade instead of a traceback from deep inside."""
    from dpo_teach.cli import main

    monkeypatch.setattr(importlib.import_module("dpo_teach.grading.grade"), "WINDOWS", True)
    (tmp_path / "subs").mkdir()
    nbformat.write(exercise_solution(assigned, "00_start_here"), tmp_path / "subs" / "ann_00_start_here.ipynb")
    args = ["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
            "--autograder-dir", str(assigned / "autograder")]
    for unsafe in ([], ["--unsafe"]):
        assert main([*args, *unsafe]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "WSL" in err and "Traceback" not in err, err


def test_the_scan_takes_no_honest_answer_for_the_package_and_still_follows_an_alias(assigned):
    """A local variable named like one of the notebook's (``pi_star``), the gradient weight read off autograd
    through the package's loss, and a string "test" are honest; a global alias of the package's function, defined in
    a later cell and called by the answer, is not."""
    from dpo_teach.grading.judge import load_tests
    from dpo_teach.grading.scan import scan

    def scanned(name: str, find: str, answer: str, extra: str = "") -> dict:
        nb = replaced(exercise_solution(assigned, name), find, answer)
        if extra:
            nb.cells.append(nbformat.v4.new_code_cell(extra))
        released = nbformat.read(assigned / "notebooks" / f"{name}.ipynb", as_version=4).cells
        return scan(nb.cells, released, load_tests(assigned / "autograder" / f"{name}.zip"))

    local_pi_star = """
def optimal_policy(pi_ref, r, beta):
    pi_star = torch.softmax(torch.log(pi_ref) + r / beta, dim=-1)
    print("test")
    return pi_star
"""
    assert scanned("01_kl_objective", "def optimal_policy(", local_pi_star) == {"grader": [], "reference": {}}
    autograd_weight = """
from dpo_teach import losses
def dpo_gradient_weight(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    x = policy_chosen_logps.detach().clone().requires_grad_(True)
    losses.dpo_loss(x, policy_rejected_logps.detach(), ref_chosen_logps.detach(), ref_rejected_logps.detach(),
                    beta=beta)[0].sum().backward()
    return -x.grad / beta
"""
    assert scanned("03_deriving_dpo", "def dpo_gradient_weight(", autograd_weight)["reference"] == {}
    through_alias = """
def optimal_policy(pi_ref, r, beta):
    return best(pi_ref, r, beta)
"""
    # the alias, and the alias behind a name bound only in an inner scope or as a default: Python still calls it
    hidden = [through_alias,
              through_alias.replace("    return", "    [best for best in ()]\n    return"),
              through_alias.replace("    return", "    def h():\n        best = 0\n    return"),
              through_alias.replace("    return", "    f = lambda best: 0\n    return"),
              through_alias.replace("beta):", "beta, best=best):")]
    for answer in hidden:
        found = scanned("01_kl_objective", "def optimal_policy(", answer, "best = bandit.optimal_policy")
        assert found["reference"] == {"optimal_policy": ["dpo_teach.bandit.optimal_policy"]}, answer
    reads_tests = local_pi_star.replace('print("test")', 'print(open("tests/q.py").read())')
    assert scanned("01_kl_objective", "def optimal_policy(", reads_tests)["grader"], "a path into tests/ is flagged"


def test_the_scan_finds_nothing_in_honest_notebooks(assigned):
    """Every master's solution, and every student notebook, scans clean: the flags above are not false alarms."""
    from dpo_teach.grading.judge import load_tests
    from dpo_teach.grading.scan import scan

    for master in sorted(grading.MASTERS.glob("*.ipynb")):
        released = nbformat.read(assigned / "notebooks" / master.name, as_version=4).cells
        tests = load_tests(assigned / "autograder" / f"{master.stem}.zip")
        for kind in ("solutions", "notebooks"):
            cells = nbformat.read(assigned / kind / master.name, as_version=4).cells
            assert scan(cells, released, tests) == {"grader": [], "reference": {}}, (kind, master.stem)


LEAK_AND_STUBBORN = """
import time
import zipfile

def leak(x):
    raise TimeoutError(f"time limit: the test called leak({x!r})")  # the grader's words, with the test's input

def stubborn(x):
    try:
        while True:
            time.sleep(0.05)
    except TimeoutError:  # the grader's time limit, caught and turned into an error of its own
        raise RuntimeError("gave up") from None
"""


def _hidden_feedback(question: str) -> tuple[str, str | None]:
    """What a student reads of ``question``'s one hidden test in LEAK_AND_STUBBORN (per-cell limit 2 s), and how
    the runner marked the case."""
    from dpo_teach.grading.grade import _public_feedback

    tests = {question: [judge.test_case(f">>> {question}('the hidden input')", hidden=True)]}
    out = judge.run_notebook(notebook(LEAK_AND_STUBBORN), "homework.ipynb", tests, 2, 120, dict(os.environ), True, [])
    assert out["status"] == "graded", out
    public_passed, feedback = _public_feedback(out["cases"][question])
    assert public_passed, out
    return feedback, out["cases"][question][0].get("stopped")


def test_a_students_error_that_reads_like_the_time_limit_is_not_quoted():
    """Only the runner can say that it ended a hidden test (``stopped``, a field of its own): a student's
    ``TimeoutError("time limit: ...")`` that carries the hidden test's input stays unquoted."""
    feedback, stopped = _hidden_feedback("leak")
    assert feedback == "hidden test 1 of 1 failed" and stopped is None, (feedback, stopped)


# A function under test that reaches the runner's main (as STEAL_FRAME), takes its channel and the question's nonce,
# and answers the hidden case itself: "stopped" by the runner, with the hidden test's own source as its message. The
# scan flags the route; a file whose code the scan did not read (test_what_runs_is_what_the_scan_read_...) ran it.
FORGED_STOP = """
import os
from IPython.utils import frame

def main_locals():
    for depth in range(1, 100):
        try:
            found = frame.extract_module_locals(depth)[1]
        except KeyError:  # a frame whose module is not in sys.modules (the tests' own)
            continue
        if {"request", "send", "requests", "decode"} <= set(found):
            return found


def kl_divergence(p, q):
    main = main_locals()
    send, requests, decode, seen = main["send"], main["requests"], main["decode"], []
    def answer(request):
        cases = [{"passed": True, "message": "", "stopped": None} for _ in request["cases"]]
        if seen:  # the second batch of a question is its hidden one
            leaked = " ; ".join(e.strip() for e in request["cases"][0]["examples"])
            cases[0] = {"passed": False, "message": leaked, "stopped": "time_limit"}
        seen.append(request["question"])
        send("result", question=request["question"], nonce=request["nonce"], cases=cases, tampered=[])
    answer(main["request"])
    for line in requests:
        request = decode(line)
        if "cases" not in request:
            break
        answer(request)
    os._exit(0)
"""


def test_a_stopped_case_gets_the_graders_words_never_the_message_the_notebook_sent():
    """The feedback on a hidden case the runner ended quoted the case's message, which the notebook's process sends:
    a notebook that impersonated the runner put the hidden test's source there, and every student could read it. A
    stopped case's message is now the judge's own words (``judge.STOPPED``)."""
    from dpo_teach.grading.grade import _public_feedback

    tests = {"kl_divergence": [judge.test_case(">>> kl_divergence(1, 2)", hidden=False),
                               judge.test_case(">>> kl_divergence('hidden-input-7319', 0.1308)", hidden=True)]}
    out = judge.run_notebook(notebook(FORGED_STOP), "homework.ipynb", tests, 5, 120, dict(os.environ), True, [])
    cases = out["cases"]["kl_divergence"]
    assert cases[1]["stopped"] == "time_limit", out  # the forged reply was taken: only the scan sees this attack
    assert not [c for c in cases if "hidden-input" in c["message"]], cases
    feedback = _public_feedback(cases)[1]
    assert feedback == ("hidden test 1 of 1 failed: TimeoutError: time limit: a cell ran past the grader's limit of "
                        "5 s per cell"), feedback


def test_a_time_limit_the_students_code_caught_is_still_the_time_limit():
    """The per-cell alarm went off during the hidden test, and the student's code turned it into an error of its
    own: the feedback still gives the grader's words (the time limit), not the student's."""
    feedback, stopped = _hidden_feedback("stubborn")
    assert feedback.startswith("hidden test 1 of 1 failed: TimeoutError: time limit") and "of 2 s" in feedback, \
        feedback
    assert stopped == "time_limit"


def test_a_notebook_that_ends_its_own_process_is_crashed_not_the_graders_error(tmp_path):
    """An instructor reads from the status alone whose failure it is: ``crashed`` when the notebook's own code ended
    its process (in a cell, or in a test of its function), ``error`` when the process ended before any of its cells
    ran (the grader or the machine). A rerun keeps a crashed row and grades an error row again."""
    tests = {"q": [judge.test_case(">>> quit_now()", hidden=False)]}
    in_cell = judge.run_notebook(notebook("import os\nos._exit(3)", "y = 1"), "homework.ipynb", tests, 30, 120,
                                 dict(os.environ), True, [])
    assert in_cell["status"] == "crashed" and "while running cell 0" in in_cell["reason"], in_cell
    in_test = judge.run_notebook(notebook("import os\ndef quit_now():\n    os._exit(3)"), "homework.ipynb", tests,
                                 30, 120, dict(os.environ), True, [])
    assert in_test["status"] == "crashed" and "while the tests ran" in in_test["reason"], in_test
    (tmp_path / "sitecustomize.py").write_text("import os\nos._exit(1)  # the grader's process dies as it starts\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    before = judge.run_notebook(notebook("x = 1"), "homework.ipynb", tests, 30, 120, env, False, [])
    assert before["status"] == "error" and "before any cell ran" in before["reason"], before
    journal = tmp_path / "grades.partial.jsonl"
    rows = {status: empty_row(status, tmp_path / f"{status}.ipynb", "hw", status)
            for status in ("crashed", "error")}
    journal.write_text("".join(json.dumps({"key": status, "row": row}) + "\n" for status, row in rows.items()))
    assert list(resumable(journal)) == ["crashed"]


def test_a_hidden_cases_inputs_never_reach_what_the_student_reads(hostile, assigned):
    """Every question's public cases run before any hidden one: kl_divergence's hidden inputs, recorded by the
    student's function, cannot come back in objective's public feedback (before, kl's hidden cases ran first)."""
    text = zipfile.ZipFile(assigned / "autograder" / "01_kl_objective.zip").read("tests/kl_divergence.py").decode()
    namespace = {}
    exec(text, namespace)  # noqa: S102 - the bundle's own test file
    literals = {hidden: {lst for case in namespace["test"]["suites"][0]["cases"] if case["hidden"] is hidden
                         for lst in re.findall(r"torch\.tensor\((\[[^\]]*\])", case["code"])}
                for hidden in (False, True)}
    only_hidden = literals[True] - literals[False]
    assert only_hidden, "kl_divergence's hidden cases have inputs of their own"
    row = hostile["rows"]["leak_hidden_inputs_01_kl_objective"]
    shown = row["questions"]["objective"]["feedback"] + row["reason"]
    assert shown.startswith("public test failed: AssertionError: [["), shown
    assert not [lst for lst in only_hidden if lst in shown], shown
    crashed = hostile["rows"]["abort_with_inputs_01_kl_objective"]
    assert crashed["status"] == "crashed" and "INPUTS" not in crashed["reason"], crashed["reason"]
    assert "what it printed last is not shown" in crashed["reason"], crashed["reason"]


def test_a_library_updating_its_own_state_during_a_test_is_not_tampering():
    """``torch.set_default_dtype(torch.float64)`` inside a correct answer (notebooks 04, 05 and 07 run in float32)
    rebinds ``torch.Storage``: while a test ran, that counted as swapping one public callable for another, and the
    whole notebook was flagged and scored 0. It is put back and does not count; a real swap still does."""
    import torch

    from dpo_teach.grading.runner import References

    default, storage, allclose = torch.get_default_dtype(), torch.Storage, torch.allclose
    refs = References()
    try:
        torch.set_default_dtype(torch.float32 if default == torch.float64 else torch.float64)
        assert torch.Storage is not storage  # what the library does to itself
        assert refs.restore(strict=True) == [] and torch.Storage is storage
        torch.allclose = torch.is_tensor
        assert refs.restore(strict=True) == ["torch.allclose"] and torch.allclose is allclose
    finally:
        torch.set_default_dtype(default)
        torch.allclose = allclose


@pytest.mark.parametrize("cell", [
    'import otter\n\nfrom dpo_teach.grading.student import find_notebook\n\n'
    'grader = otter.Notebook(find_notebook("01_kl_objective"))',  # the grader cell before checks_ignore_prints
    'import otter\n\nfrom dpo_teach.grading.student import checks_ignore_prints, find_notebook\n\n'
    'checks_ignore_prints()\ngrader = otter.Notebook(find_notebook("01_kl_objective"))',
])
def test_a_grader_cell_of_an_earlier_release_scans_clean(assigned, cell):
    """A student who kept a notebook from before the bundles were rebuilt has a grader cell that is no longer the
    released one, so it is scanned: what it imports from grading.student is the student's side of the grader, not
    its machinery (before, either form was flagged and the notebook scored 0)."""
    assert _scan_with(assigned, cell) == {"grader": [], "reference": {}}
    found = _scan_with(assigned, "from dpo_teach.grading.student import find_notebook, SETUP_CHECK")["grader"]
    assert any("SETUP_CHECK" in finding for finding in found), found  # any other name from there: the grader's


def test_a_tool_of_a_questions_tests_is_not_its_forbidden_answer(assigned):
    """05's step tests pass the step a loss function (DPO's, IPO's): those are arguments the answer may use, not the
    answer it must not copy; the package's own step is. Before, naming ipo_loss in a public test made any step that
    used it "call the package's own implementation" and score 0."""
    from dpo_teach.grading import scan as scan_module

    tests = judge.load_tests(assigned / "autograder" / "05_dpo_on_gpt2.zip")
    named = "\n".join(case["code"] for case in tests["dpo_training_step"])
    assert "dpo_teach.losses.ipo_loss" in named and "dpo_teach.dpo.dpo_step" in named
    assert scan_module.references(tests)["dpo_training_step"] == {"dpo_teach.dpo.dpo_step"}
