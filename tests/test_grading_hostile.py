"""Submissions that attack the grader, and honest ones that must not be hurt by it: one `grade` batch.

Every attack class a student has tried on an in-kernel grader (score inflation by patching, test rewriting, forged
replies, processes left behind, signalling the grader, reading the hidden tests, answers that call the package's
implementation) is a submission here, graded in one batch with innocent notebooks before and after it; the
fairness cases (lost metadata, a debug print, two notebooks of one assignment) are in the same batch. Each
hostile answer is wrong, so the only way it could score is by beating the grader.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import signal
import time
from pathlib import Path

import nbformat
import pytest
from test_grading import exercises_only, replaced  # tests/ is on sys.path (pytest's rootdir import)

from dpo_teach import grading
from dpo_teach.grading import sandbox

OTTER = importlib.util.find_spec("otter").origin  # the environment's otter package, a target for tampering

WRONG_KL = """
import torch
def kl_divergence(p, q):
    return (q * (torch.log(q) - torch.log(p))).sum(-1)  # KL(q‖p): the wrong direction
"""

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
}
LOSES = {  # hostile submission → the question its (wrong) answer must lose
    "patch_allclose": "kl_divergence", "patch_builtins": "kl_divergence", "shadow_builtins": "kl_divergence",
    "patch_while_tested": "kl_divergence", "rewrite_tests": "kl_divergence", "read_hidden": "diagnose_small_beta",
    "reference_wrapper": "dpo_loss", "reference_helper": "dpo_loss", "forge_reply": "kl_divergence",
    "background_process": "kl_divergence", "signal_grader": "kl_divergence",
}
FLAGGED = {"patch_allclose", "patch_builtins", "shadow_builtins", "patch_while_tested", "rewrite_tests",
           "forge_reply", "background_process", "signal_grader", "read_hidden"}


def _solution(assigned, name: str):
    return exercises_only(nbformat.read(assigned / "solutions" / f"{name}.ipynb", as_version=4))


@pytest.fixture(scope="module")
def hostile(assigned, notebook_reference, tmp_path_factory):
    assert sandbox.unavailable_reason() is None, sandbox.unavailable_reason()
    folder, out = tmp_path_factory.mktemp("hostile"), tmp_path_factory.mktemp("hostile_grades")
    marker = tmp_path_factory.mktemp("outside") / "marker.txt"
    autograder = assigned / "autograder"
    fill = {"autograder": autograder, "root": grading.ROOT, "submissions": folder, "marker": marker,
            "grader_pid": os.getpid(), "otter": OTTER}
    for kind, (name, find, source, before) in HOSTILE.items():
        nb = replaced(_solution(assigned, name), find, source.format(**fill))
        at = next(i for i, c in enumerate(nb.cells) if find in c.source)
        for cell in reversed(before):
            nb.cells.insert(at, nbformat.v4.new_code_cell(cell.format(**fill)))
        nbformat.write(nb, folder / f"{kind}_{name}.ipynb")
    for first_or_last in ("aaa", "zzz"):  # innocents graded before and after every attack
        nbformat.write(_solution(assigned, "01_kl_objective"),
                       folder / f"{first_or_last}_innocent_01_kl_objective.ipynb")
    nbformat.write(_solution(assigned, "00_start_here"), folder / "zzz_innocent_00_start_here.ipynb")
    # fairness: metadata lost on re-saving, a debug print in a correct answer, two notebooks from one student
    nb = _solution(assigned, "03_deriving_dpo")
    nb.metadata = {}
    nbformat.write(nb, folder / "no_metadata_03_deriving_dpo.ipynb")
    nb = _solution(assigned, "01_kl_objective")
    (kl,) = [c for c in nb.cells if "def kl_divergence(" in c.source]
    kl.source = kl.source.replace('    """KL(p‖q)', '    print("debug", p.shape, q.shape)\n    """KL(p‖q)', 1)
    assert "print(" in kl.source
    nbformat.write(nb, folder / "debug_print_01_kl_objective.ipynb")
    (folder / "carol").mkdir()
    nbformat.write(replaced(_solution(assigned, "01_kl_objective"), "def kl_divergence(", WRONG_KL),
                   folder / "carol" / "old_01_kl_objective.ipynb")
    os.utime(folder / "carol" / "old_01_kl_objective.ipynb", (time.time() - 3600, time.time() - 3600))
    nbformat.write(_solution(assigned, "01_kl_objective"), folder / "carol" / "final_01_kl_objective.ipynb")

    watched = [*autograder.iterdir(), grading.ROOT / "dpo_teach" / "losses.py", Path(OTTER)]
    bundles = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched}
    signals = []
    previous = signal.signal(signal.SIGUSR2, lambda *a: signals.append(a))
    try:
        report = grading.grade(folder, out, autograder=autograder, cell_timeout=60, timeout=240, jobs=2)
        time.sleep(2)  # a process left behind would write within 0.1 s
    finally:
        signal.signal(signal.SIGUSR2, previous)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in watched}
    return {"rows": {r["student"]: r for r in report["results"]}, "report": report, "signals": signals,
            "bundles_unchanged": bundles == after, "marker": marker, "folder": folder}


def test_innocent_notebooks_score_in_full_whatever_was_graded_beside_them(hostile):
    rows = hostile["rows"]
    for student in ["aaa_innocent_01_kl_objective", "zzz_innocent_01_kl_objective", "zzz_innocent_00_start_here"]:
        assert rows[student]["status"] == "graded" and rows[student]["score"] == rows[student]["possible"] > 0, \
            rows[student]["reason"]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_an_attack_does_not_score_and_is_reported(hostile, kind):
    name = HOSTILE[kind][0]
    row = hostile["rows"][f"{kind}_{name}"]
    question = LOSES[kind]
    assert row["questions"][question]["score"] == 0, f"{kind}: {row['reason']}"
    if kind in FLAGGED:
        assert row["status"] == "flagged" and row["score"] == 0 and row["flags"], f"{kind}: {row}"
    assert all("\n>>>" not in r["feedback"] and "_huge" not in r["feedback"] for r in row["questions"].values())


def test_patching_is_named_in_the_flags(hostile):
    rows = hostile["rows"]
    assert any("torch.allclose" in f for f in rows["patch_allclose_01_kl_objective"]["flags"])
    assert any("builtins" in f for f in rows["patch_builtins_01_kl_objective"]["flags"])
    assert any("shadows the builtin abs" in f for f in rows["shadow_builtins_01_kl_objective"]["flags"])
    assert "while it was tested" in rows["patch_while_tested_01_kl_objective"]["questions"]["kl_divergence"]["feedback"]
    assert "grader's channel" in rows["forge_reply_01_kl_objective"]["reason"]


def test_reference_wrappers_score_zero_for_their_question_only(hostile):
    for kind in ("reference_wrapper", "reference_helper"):
        row = hostile["rows"][f"{kind}_03_deriving_dpo"]
        assert row["status"] == "graded" and row["score"] == row["possible"] - 3, row["reason"]
        assert "dpo_teach.losses.dpo_loss" in row["questions"]["dpo_loss"]["feedback"]


def test_nothing_outside_the_sandbox_was_touched(hostile):
    assert hostile["signals"] == [], "a submission signalled the grader"
    assert hostile["bundles_unchanged"], "a submission rewrote the bundles, the package or the environment"
    assert not hostile["marker"].exists(), "a process left behind by a submission wrote outside its sandbox"
    for path in hostile["folder"].rglob("*.ipynb"):
        assert path.read_text() != "SABOTAGED", f"{path} was overwritten by another submission's process"


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
    assert hostile["report"]["students"]["carol"] == {"score": 5.0, "possible": 5.0,
                                                      "assignments": {"01_kl_objective": 5.0}}


def test_an_interrupted_batch_resumes_without_grading_again(assigned, notebook_reference, tmp_path, monkeypatch):
    grade_module = importlib.import_module("dpo_teach.grading.grade")

    folder = tmp_path / "subs"
    folder.mkdir()
    for student in ("ann", "ben"):
        nbformat.write(_solution(assigned, "00_start_here"), folder / f"{student}_00_start_here.ipynb")
    calls = []
    real = grade_module.grade_submission

    def counted(name, *args, **kwargs):
        student = name.split("_")[0]  # a file directly in the folder: the student is the file's name
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
    grading.grade(folder, tmp_path / "out", autograder=assigned / "autograder", log=lambda m: None)
    assert calls == ["ann", "ben", "ben", "ann", "ben"], "a finished batch is graded afresh"


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
    from dpo_teach.cli import main

    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "the sandbox needs Linux namespaces; this is darwin")
    (tmp_path / "subs").mkdir()
    nbformat.write(_solution(assigned, "00_start_here"), tmp_path / "subs" / "ann_00_start_here.ipynb")
    args = ["grade", str(tmp_path / "subs"), "--out", str(tmp_path / "out"),
            "--autograder-dir", str(assigned / "autograder")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "this is darwin" in err and "--unsafe" in err and not (tmp_path / "out" / "grades.csv").exists()
    assert main([*args, "--unsafe"]) == 0
    assert "ann_00_start_here" in (tmp_path / "out" / "grades.csv").read_text()


def test_the_scan_takes_no_honest_answer_for_the_package_and_still_follows_an_alias(assigned):
    """A local variable named like one of the notebook's (``pi_star``), the gradient weight read off autograd
    through the package's loss, and a string "test" are honest; a global alias of the package's function, defined in
    a later cell and called by the answer, is not."""
    from dpo_teach.grading.judge import load_tests
    from dpo_teach.grading.scan import scan

    def scanned(name: str, find: str, answer: str, extra: str = "") -> dict:
        nb = replaced(_solution(assigned, name), find, answer)
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
