"""A Gradescope bundle graded as the platform grades it: unpacked into an empty folder, its environment built from
its own files only (``setup.sh``), its ``run_autograder`` run from a folder of its own (not the repository, whose
package ``python -m`` would import) on a correct and on a wrong submission; and what its
grading entry point (``gradescope.run``) writes: no hidden test quoted, no process of the notebook's left running
where the container forbids the sandbox."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest
from test_grading import (  # tests/ is on sys.path (pytest's rootdir import)
    WRONG,
    exercise_solution,
    exercises_only,
    replaced,
)
from test_grading_hostile import WRONG_KL, spawn_refused

from dpo_teach.grading import gradescope, judge, sandbox
from dpo_teach.grading.manifests import ManifestError, load_manifests
from dpo_teach.grading.reports import row_reason


def test_a_bundle_grades_from_an_empty_folder(assigned, notebook_reference, tmp_path):
    bundles = gradescope.build(tmp_path / "bundles", autograder=assigned / "autograder",
                               released=assigned / "notebooks")
    (bundle,) = [b for b in bundles if b.stem == "01_kl_objective"]
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
    assert {"setup.sh", "run_autograder", "requirements.txt", "torch.txt", "pip_install.py",
            "autograder/01_kl_objective.zip", "released/01_kl_objective.ipynb"} <= set(names)
    assert any(n.startswith("dpo_teach-") and n.endswith(".whl") for n in names)
    assert any(n.startswith("cache/reference-tiny-") and n.endswith(".safetensors") for n in names), names

    root = tmp_path / "autograder"  # Gradescope's /autograder
    source = root / "source"
    source.mkdir(parents=True)
    subprocess.run(["unzip", "-q", str(bundle), "-d", str(source)], check=True)
    # the machine's own environment (its pip configuration), without this suite's virtual environment
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    clean.update(PATH=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p),
                 HOME=str(tmp_path / "home"), TORCH_INDEX="", PYTHON=sys._base_executable,
                 PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", os.path.expanduser("~/.cache/pip")),
                 UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR", os.path.expanduser("~/.cache/uv")))
    clean.pop("DPO_TEACH_CACHE", None)
    # from a folder of its own, as on Gradescope: run from the repository, `python -m` would import the repository's
    # package instead of the bundle's wheel (and hid that the sandbox covered the wheel's whole environment)
    setup = subprocess.run(["bash", str(source / "setup.sh")], env=clean, capture_output=True, text=True, cwd=root)
    assert setup.returncode == 0, setup.stderr[-2000:]

    solution = exercise_solution(assigned, "01_kl_objective")
    scores = {}
    wrong = replaced(copy.deepcopy(solution), "def kl_divergence(", WRONG_KL)
    for kind, nb in [("correct", solution), ("wrong", wrong)]:
        (root / "submission").mkdir(exist_ok=True)
        for old in (root / "submission").iterdir():
            old.unlink()
        nbformat.write(nb, root / "submission" / "homework (1).ipynb")
        done = subprocess.run(["bash", str(source / "run_autograder")], env={**clean, "AUTOGRADER_ROOT": str(root)},
                              capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads((root / "results" / "results.json").read_text())
        scores[kind] = (results["score"], {t["name"]: t["score"] for t in results["tests"]}, results["output"])
        assert all(t["max_score"] > 0 and t["visibility"] == "visible" for t in results["tests"])
    assert scores["correct"][:2] == (5.0, {"kl_divergence": 2.0, "objective": 1.0, "optimal_policy": 2.0}), scores
    assert scores["wrong"][:2] == (3.0, {"kl_divergence": 0.0, "objective": 1.0, "optimal_policy": 2.0}), scores
    assert "kl_divergence" in scores["wrong"][2]


def test_an_installed_package_keeps_its_python_environment_in_view(tmp_path, monkeypatch):
    """A bundle's package is a wheel in its venv's site-packages: the sandbox covered every other package there
    (torch, IPython: each notebook ended before its first cell), so every submission scored 0."""
    import importlib

    grade_module = importlib.import_module("dpo_teach.grading.grade")  # the module (the package exports grade())

    site_packages = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()
                         and Path(sys.prefix).resolve() in Path(p).resolve().parents)
    monkeypatch.setattr(grade_module, "ROOT", site_packages)
    folders = [tmp_path / name for name in ("submissions", "out", "autograder")]
    hidden = grade_module._hidden(*folders)
    assert hidden == [str(f.resolve()) for f in folders], hidden[:5]


def test_the_bundled_wheel_holds_the_package_as_it_is_now(tmp_path, monkeypatch):
    """A clone's ``build/`` folder keeps what setuptools copied there earlier, deleted modules included; the bundle's
    wheel is built from a copy of the sources, so a stale file there never reaches Gradescope."""
    clone = gradescope.copy_sources(gradescope.ROOT, tmp_path / "clone")
    stale = clone / "build" / "lib" / "dpo_teach" / "removed_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("STALE = True\n")
    monkeypatch.setattr(gradescope, "ROOT", clone)
    (tmp_path / "out").mkdir()
    with zipfile.ZipFile(gradescope._wheel(tmp_path / "out")) as z:
        modules = {n for n in z.namelist() if n.endswith(".py")}
    assert modules == {str(p.relative_to(clone)) for p in (clone / "dpo_teach").rglob("*.py")}


def _source(assigned, root, name: str = "01_kl_objective"):
    """An unpacked bundle's grading files (what ``run`` reads), without its environment: this Python grades."""
    source = root / "source"
    (source / "autograder").mkdir(parents=True)
    (source / "released").mkdir()
    for suffix in (".json", ".zip"):
        shutil.copy(assigned / "autograder" / f"{name}{suffix}", source / "autograder")
    shutil.copy(assigned / "notebooks" / f"{name}.ipynb", source / "released")
    return source


def _submit(root, nb):
    folder = root / "submission"
    folder.mkdir(exist_ok=True)
    nbformat.write(nb, folder / "homework.ipynb")
    return folder


HARD_CODED_KL = """
import torch
def kl_divergence(p, q):
    if p.shape == (2,):  # the answer of the public check on two responses, typed in
        return torch.tensor(0.5506612476718904, dtype=p.dtype)
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)
"""


def test_results_json_numbers_a_failed_hidden_test_and_never_quotes_it(assigned, notebook_reference, tmp_path):
    source = _source(assigned, tmp_path)
    wrong = replaced(exercise_solution(assigned, "01_kl_objective"),
                     "def kl_divergence(", HARD_CODED_KL)  # passes the public tests, fails the hidden ones
    report = gradescope.run(source, _submit(tmp_path, wrong), tmp_path / "results" / "results.json")
    written = json.loads((tmp_path / "results" / "results.json").read_text())
    assert written == json.loads(json.dumps(report)) and written["score"] == 3.0, written
    (kl,) = [t for t in written["tests"] if t["name"] == "kl_divergence"]
    assert re.fullmatch(r"hidden test 1 of \d+ failed", kl["output"]), kl["output"]
    hidden = [c["code"] for c in judge.load_tests(source / "autograder" / "01_kl_objective.zip")["kl_divergence"]
              if c["hidden"]]
    messages = [m for code in hidden for m in re.findall(r"'([^']{8,})'\s*$", code, flags=re.M)]
    assert messages and not any(m in json.dumps(written) for m in messages), "a hidden test's message was quoted"


def test_without_namespaces_nothing_the_notebook_started_outlives_the_grading(assigned, notebook_reference, tmp_path,
                                                                              monkeypatch):
    """A Gradescope container that forbids namespaces: the grader runs the notebook without its sandbox. A process
    the notebook starts in a session of its own (out of killpg's reach), meant to rewrite results.json after the
    grader wrote it, is ended before ``run`` returns."""
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: "simulated: this container forbids namespaces")
    source, pid_file, marker = _source(assigned, tmp_path), tmp_path / "pid", tmp_path / "late.txt"
    nb = exercises_only(nbformat.read(assigned / "notebooks" / "01_kl_objective.ipynb", as_version=4))
    nb.cells.append(nbformat.v4.new_code_cell(
        "import os\n"
        f"os.posix_spawn('/bin/sh', ['sh', '-c', 'echo $$ > {pid_file}; sleep 4; echo late > {marker}'], "
        "dict(os.environ), setsid=True)\n"
        "import time\ntime.sleep(1)"))
    report = gradescope.run(source, _submit(tmp_path, nb), tmp_path / "results" / "results.json")
    assert "not available in this container" in report["output"] and report["score"] == 0, report["output"]
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the notebook's process outlived the grading"
    time.sleep(5)  # when it would have written
    assert not marker.exists()


def test_the_manifests_mark_the_multiple_choice_questions(assigned):
    """``assign`` marks the letter questions (04's concept checks, 07's diagnoses) and the true/false ones
    ``"choice": true`` in the manifest, found by their public check, and every other question ``false``."""
    for manifest in sorted((assigned / "autograder").glob("*.json")):
        questions = json.loads(manifest.read_text())["questions"]
        assert {q["name"]: q["choice"] for q in questions} == {
            q["name"]: q["name"].startswith(("concept_", "diagnose_")) for q in questions}, manifest.stem
    seven = json.loads((assigned / "autograder" / "07_variants_and_pitfalls.json").read_text())["questions"]
    assert sum(q["choice"] for q in seven) == 4


def test_a_manifest_written_before_the_mark_still_withholds_multiple_choice(assigned, tmp_path):
    """A manifest from before ``assign`` wrote ``choice`` (a course's own, not rebuilt): its multiple-choice
    questions are found from the bundle's public tests, so Gradescope still hides their results; a manifest with the
    mark on some questions only, or with a mark that is not true or false, is refused with what to do."""
    for suffix in (".json", ".zip"):
        shutil.copy(assigned / "autograder" / f"04_fixed_reward_and_reference{suffix}", tmp_path)
    path = tmp_path / "04_fixed_reward_and_reference.json"
    manifest = json.loads(path.read_text())
    marked = {q["name"]: q["choice"] for q in manifest["questions"]}
    path.write_text(json.dumps({**manifest, "questions": [{k: v for k, v in q.items() if k != "choice"}
                                                          for q in manifest["questions"]]}))
    questions = load_manifests(tmp_path)["04_fixed_reward_and_reference"]["questions"]
    assert {q: about["choice"] for q, about in questions.items()} == marked and any(marked.values())
    manifest["questions"][0].pop("choice")
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"questions\[0\] needs 'choice'.*make assign"):
        load_manifests(tmp_path)
    for wrong in (None, 0, "no"):  # read as they are, null or 0 would show a letter's result at once
        manifest["questions"][0]["choice"] = wrong
        path.write_text(json.dumps(manifest))
        with pytest.raises(ManifestError, match=rf"questions\[0\]: 'choice' must be true or false, not {wrong!r}"):
            load_manifests(tmp_path)


def test_gradescope_withholds_what_the_manifest_marks(assigned, tmp_path):
    """The manifest's mark decides: 00's warm-up question marked ``choice`` (by a course's own ``assign``) waits for
    published grades, and the output says when it comes."""
    source = _source(assigned, tmp_path, "00_start_here")
    path = source / "autograder" / "00_start_here.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "questions": [{**q, "choice": True} for q in manifest["questions"]]}))
    report = gradescope.run(source, _submit(tmp_path, exercise_solution(assigned, "00_start_here")),
                            tmp_path / "results.json")
    assert [t["visibility"] for t in report["tests"]] == ["after_published"] and report["score"] == 1.0, report
    assert report["output"].startswith("All code questions passed.\nYour multiple-choice answers"), report["output"]


def test_what_a_student_sees_at_once_leaves_out_only_the_multiple_choice_results():
    """The output text is the row's reason without the withheld questions (``reports.row_reason``): the same for a
    right and a wrong letter, with the code question that lost points, the second start and the first cell error."""
    def row(letter_score: float) -> dict:
        questions = {"ipo_loss": {"score": 0.0, "possible": 2.0, "public_passed": False,
                                  "feedback": "public test failed: AssertionError: the IPO target is 1/(2β)"},
                     "diagnose_small_beta": {"score": letter_score, "possible": 1.0, "public_passed": True,
                                             "feedback": "" if letter_score else "hidden test 1 of 1 failed"}}
        return {"status": "graded", "problem": "", "tries": ["start", "cell 2"], "flags": [], "questions": questions,
                "errors": ["NameError: name 'x' is not defined (in cell `print(x)`)"]}

    right, wrong = row(1.0), row(0.0)
    assert "diagnose_small_beta (hidden test 1 of 1)" in row_reason(wrong)  # the instructor's reason
    seen = gradescope._student_output(wrong, {"diagnose_small_beta"})
    assert seen == gradescope._student_output(right, {"diagnose_small_beta"})
    first, note = seen.split("\n")
    assert first == ("started twice: the first start ran out of time before any cell ran (a busy machine); lost "
                     "points on ipo_loss (AssertionError: the IPO target is 1/(2β)); 1 cell error(s), first: "
                     "NameError: name 'x' is not defined (in cell `print(x)`)"), first
    assert note.startswith("Your multiple-choice answers (diagnose_small_beta) are scored now"), note
    only_letters = {**wrong, "questions": {"diagnose_small_beta": wrong["questions"]["diagnose_small_beta"]},
                    "tries": [], "errors": []}
    assert gradescope._student_output(only_letters, {"diagnose_small_beta"}).startswith("All code questions passed.")


def test_a_student_on_gradescope_is_not_told_what_the_scan_caught_or_what_the_instructor_should_do():
    """Gradescope showed the instructor's reason: a flagged upload was told what the scan caught (the next upload, a
    minute later, knew what to hide), and an empty one "ask the student to upload it again"."""
    flagged = {"status": "flagged", "problem": "", "tries": ["cell 9"], "questions": {}, "errors": [],
               "flags": ["line 3: assigns to dpo_teach.grading.runner.report"]}
    assert "runner.report" in row_reason(flagged)  # the instructor's reason names it
    seen = gradescope._student_output(flagged, set())
    assert seen == "it touches the grading machinery, so it scores 0 until your instructor has read it", seen
    flagged["questions"] = {"kl_divergence": {"score": 2.0, "possible": 2.0, "feedback": "", "public_passed": True}}
    assert gradescope.result_tests(flagged, set()) == [{  # each test 0 too, as the total (it read 2 / 2 beside a 0)
        "name": "kl_divergence", "score": 0.0, "max_score": 2.0, "output": "Not scored yet: see the output above.",
        "visibility": "visible"}]
    empty = {**flagged, "status": "invalid", "flags": [], "tries": [],
             "problem": "not a valid notebook: the file is empty (an upload that failed): ask the student to upload "
                        "it again"}
    assert gradescope._student_output(empty, set()) == ("not a valid notebook: the file is empty (an upload that "
                                                        "failed): upload it again")


def test_a_multiple_choice_result_waits_until_grades_are_published(assigned, tmp_path):
    """A student who resubmits and watches a multiple-choice question's score finds its answer in four tries: its test
    is shown only once the grades are published (and so, by Gradescope's rule, is the total), and nothing a student
    sees at once differs between a right and a wrong letter. A code question stays visible, with its feedback."""
    source = _source(assigned, tmp_path, "07_variants_and_pitfalls")
    solution = exercise_solution(assigned, "07_variants_and_pitfalls")
    wrong_code = replaced(solution, "def ipo_loss(", WRONG["ipo_wrong_target"][2])
    seen, scores = [], []
    for letter in ("a", "b"):  # "a" is right
        nb = replaced(copy.deepcopy(wrong_code), "diagnose_small_beta =", f'diagnose_small_beta = "{letter}"')
        (tmp_path / letter).mkdir()
        report = gradescope.run(source, _submit(tmp_path / letter, nb), tmp_path / letter / "results.json")
        visibility = {t["name"]: t["visibility"] for t in report["tests"]}
        assert visibility == {q: "after_published" if q.startswith("diagnose_") else "visible" for q in visibility}
        seen.append((report["output"], [t for t in report["tests"] if t["visibility"] == "visible"]))
        scores.append(report["score"])
    assert seen[0] == seen[1], "what a student sees at once depends on the multiple-choice answer"
    assert "ipo_loss" in seen[0][0] and "when your instructor publishes the grades" in seen[0][0], seen[0][0]
    assert scores == [6.0, 5.0], "the instructor's total counts the multiple-choice answer"


def test_a_sandbox_that_fails_for_the_notebook_grades_it_in_the_container(assigned, tmp_path, monkeypatch):
    """The probe passed but the notebook's own sandbox did not start: Gradescope's container isolates the submission,
    so it is graded without the grader's sandbox (and says so) rather than failing the student's submission."""
    monkeypatch.setattr(sandbox, "unavailable_reason", lambda: None)
    monkeypatch.setattr(judge, "_spawn", spawn_refused)  # the notebook's process says its sandbox did not start
    source = _source(assigned, tmp_path, "00_start_here")
    nb = exercise_solution(assigned, "00_start_here")
    report = gradescope.run(source, _submit(tmp_path, nb), tmp_path / "results" / "results.json")
    assert report["score"] == 1.0 and "not available in this container" in report["output"], report


def test_a_grader_failure_is_the_autograders_failure_not_a_students_zero(assigned, tmp_path, monkeypatch, capsys):
    """A notebook whose process ended before its first cell (the grader's or the container's fault) was written to
    results.json as a score of 0 with exit status 0: the student saw a 0 and nobody was told. Now nothing is
    written, and the command exits 1, so that Gradescope says the autograder failed and the submission can be
    regraded."""
    from dpo_teach.grading.__main__ import main

    source = _source(assigned, tmp_path, "00_start_here")
    submission = _submit(tmp_path, exercise_solution(assigned, "00_start_here"))
    failed = {"status": "error", "reason": "the notebook's process ended while starting (before any cell ran): "
              "ModuleNotFoundError: No module named 'IPython.core.oinspect'", "questions": {}, "score": 0.0}
    monkeypatch.setattr(gradescope, "_graded_row", lambda *a: (failed, None))
    results = tmp_path / "results" / "results.json"
    assert main(["gradescope", "--source", str(source), "--submission", str(submission),
                 "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert not results.exists() and "the grader failed on this submission, not the student's notebook" in err, err
    assert "No module named 'IPython.core.oinspect'" in err and "regrade" in err


def test_another_notebook_of_the_course_is_named_not_flagged(assigned, tmp_path):
    """00's notebook uploaded to 03's assignment was scored 0 "until an instructor has read it: it touches the
    grading machinery": the student had only picked the wrong file."""
    source = _source(assigned, tmp_path, "03_deriving_dpo")
    report = gradescope.run(source, _submit(tmp_path, exercise_solution(assigned, "00_start_here")),
                            tmp_path / "results" / "results.json")
    assert report["score"] == 0 and report["tests"] == [], report
    assert report["output"] == ("homework.ipynb is the notebook of 00_start_here, and this assignment is "
                                "03_deriving_dpo: upload your 03_deriving_dpo.ipynb instead (nothing was graded).")
