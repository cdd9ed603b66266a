"""Autograder bundles and their manifests (``make assign`` writes both): read, checked, and the hidden and public
tests parsed once, with errors that name the file and say to run ``make assign`` again."""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path

from dpo_teach.grading.assign import multiple_choice
from dpo_teach.grading.judge import load_tests


class ManifestError(ValueError):
    """An autograder manifest or bundle that cannot be used; the message names the file and the fix."""


def _manifest_problem(manifest) -> str | None:
    """What makes a parsed manifest unusable (None when nothing does)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("assignment"), str):
        return "no 'assignment' name"
    if not isinstance(manifest.get("questions"), list):
        return "no 'questions' list"
    for i, q in enumerate(manifest["questions"]):
        ok = (isinstance(q, dict) and isinstance(q.get("name"), str) and isinstance(q.get("manual"), bool)
              and isinstance(q.get("points"), (int, float)) and not isinstance(q.get("points"), bool)
              and 0 <= q["points"] < float("inf"))
        if not ok:
            return f"questions[{i}] needs a 'name', 'points' (a number ≥ 0) and 'manual' (true/false)"
    if not manifest["questions"]:
        return "it lists no question, so every notebook would score 0 of 0"
    if sum(q["points"] for q in manifest["questions"]) == float("inf"):  # each finite, their sum not: nan percentages
        return "its points add up to more than a number holds (each question's points should be a few at most)"
    names = [q["name"] for q in manifest["questions"]]
    twice = next((i for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:  # read into one dict, the later entry's points would count, unsaid
        return f"questions[{twice}]: {names[twice]!r} is listed twice"
    wrong = next((i for i, q in enumerate(manifest["questions"]) if "choice" in q and type(q["choice"]) is not bool),
                 None)
    if wrong is not None:  # null, 0 or "no" would decide silently whether students see a letter's result at once
        return f"questions[{wrong}]: 'choice' must be true or false, not {manifest['questions'][wrong]['choice']!r}"
    marked = ["choice" in q for q in manifest["questions"]]
    if any(marked) and not all(marked):
        return f"questions[{marked.index(False)}] needs 'choice' (true/false), as the others have"
    return None


def _questions(manifest: dict, tests: dict[str, list[dict]]) -> dict[str, dict]:
    """``{question: {"points", "manual", "choice"}}`` of a manifest. A manifest written before ``assign`` marked the
    multiple-choice questions (no ``choice`` at all) has them found from the bundle's public tests, as ``assign``
    finds them: read without the mark, their results would be shown to students at once on Gradescope."""
    derived = multiple_choice(tests) if all("choice" not in q for q in manifest["questions"]) else set()
    return {q["name"]: {"points": q["points"], "manual": q["manual"], "choice": q.get("choice", q["name"] in derived)}
            for q in manifest["questions"]}


def _pair_problem(manifest: dict, tests: dict[str, list[dict]]) -> str | None:
    """What tells that a manifest and a bundle are not of one ``make assign`` (None when nothing does): every
    auto-graded question of the manifest has tests in the bundle, and every question of the bundle is one of them."""
    auto = {q["name"] for q in manifest["questions"] if not q["manual"]}
    untested, unknown = sorted(auto - set(tests)), sorted(set(tests) - auto)
    if untested:  # every answer would score 0 there
        return (f"the bundle has no tests of {', '.join(untested[:3])}{', ...' * (len(untested) > 3)}, so every "
                "answer would score 0 there")
    if unknown:  # their tests would run and count for nothing
        return (f"the manifest lists no auto-graded question {', '.join(unknown[:3])}{', ...' * (len(unknown) > 3)}, "
                "whose tests would count for nothing")
    return None


def _bundle_problem(bundle: Path) -> str | None:
    """Why otter could not open ``bundle`` (None when the zip reads back intact)."""
    try:
        with zipfile.ZipFile(bundle) as z:
            broken = z.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        return f"not a zip archive ({type(e).__name__}: {e})"
    return f"member {broken} is corrupt" if broken else None


def load_manifests(autograder: Path) -> dict[str, dict]:
    """``{assignment: {"bundle": path, "questions": {q: {"points", "manual", "choice"}}, "tests", "digest"}}`` for
    every bundle in ``autograder``.

    Raises:
        ManifestError: a manifest that is not JSON or lacks a field, a bundle that is not an intact zip, a bundle or
            a manifest without the other, a pair whose questions differ, two manifests of one assignment.
    """
    manifests = {}
    fix = "run `make assign` to write the bundles and manifests again"
    for path in sorted(Path(autograder).glob("*.zip")):
        if not path.with_suffix(".json").is_file():  # else the assignment was graded as one with no exercise
            raise ManifestError(f"{path}: a test bundle without its manifest {path.with_suffix('.json').name}; "
                                f"copy both files of one `make assign`, or {fix}")
    for path in sorted(Path(autograder).glob("*.json")):
        bundle = path.with_suffix(".zip")
        if not bundle.is_file():
            raise ManifestError(f"{path}: a manifest without its test bundle {bundle.name}"
                                f"{' (a folder)' if bundle.is_dir() else ''}; copy both files of one `make assign`, "
                                f"or {fix}")
        try:
            manifest = json.loads(path.read_bytes())
        except (ValueError, RecursionError, OSError) as e:
            raise ManifestError(f"{path}: not a readable autograder manifest ({e}); {fix}") from None
        problem = _manifest_problem(manifest)
        if problem:
            raise ManifestError(f"{path}: not a usable autograder manifest ({problem}); {fix}")
        problem = _bundle_problem(bundle)
        if problem:
            raise ManifestError(f"{bundle}: not a usable autograder bundle ({problem}); {fix}")
        tests = load_tests(bundle)
        problem = _pair_problem(manifest, tests)
        if problem:
            raise ManifestError(f"{path} and {bundle.name} are not one assignment's ({problem}); copy both files of "
                                f"one `make assign`, or {fix}")
        if manifest["assignment"] in manifests:
            raise ManifestError(f"{manifests[manifest['assignment']]['bundle'].with_suffix('.json')} and {path} both "
                                f"name assignment {manifest['assignment']!r}: one of them is a copy; {fix}")
        digest = hashlib.sha256(bundle.read_bytes() + path.read_bytes()).hexdigest()
        manifests[manifest["assignment"]] = {"bundle": bundle, "questions": _questions(manifest, tests),
                                             "tests": tests, "digest": digest}
    return manifests
