"""``make assign``: otter assign on every master → student notebooks, reproducible bundles and manifests."""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import zipfile
from pathlib import Path

import yaml

from dpo_teach.grading.student import SETUP_CHECK
from dpo_teach.utils import atomic_file, atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
MASTERS, NOTEBOOKS, AUTOGRADER = ROOT / "course" / "masters", ROOT / "notebooks", ROOT / "course" / "autograder"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same master gives the same bundle, byte for byte
_GRADER = re.compile(r'otter\.Notebook\("(?P<stem>[^"]+)\.ipynb"\)')  # the master's grader: one file name


def read_questions(master: Path) -> list[dict]:
    """The questions of a master notebook in order: ``[{"name": q, "points": p, "manual": bool}, ...]``."""
    import nbformat  # not at the top: each submission's process imports this package (nbformat costs ~1 s)

    questions = []
    for cell in nbformat.read(master, as_version=4).cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(cell.source.split("\n", 1)[1]) or {}
            questions.append({"name": config["name"], "points": config.get("points", 1),
                              "manual": bool(config.get("manual"))})
    return questions


def multiple_choice(tests: dict[str, list[dict]]) -> set[str]:
    """The questions of a test bundle (``judge.load_tests``) whose answer is one of a few choices: a public test checks
    only that the answer is a letter (``type(q) is str and q.strip().lower() in ('a', 'b', 'c', 'd')``) or True/False
    (``isinstance(q, bool)``), as 04's concept checks and 07's diagnoses do. ``assign`` marks them ``"choice": true``
    in the manifest."""
    def choice(q: str, code: str) -> bool:
        name = re.escape(q)
        return re.search(rf"\btype\({name}\) is str\b|\bisinstance\({name}, bool\)", code) is not None

    return {q for q, cases in tests.items() if any(choice(q, c["code"]) for c in cases if not c["hidden"])}


def manifest(stem: str, master: Path, bundle: Path) -> dict:
    """The manifest of an assignment: its name and its questions in order, each with its points, whether it is graded
    by hand (``manual``) and whether its answer is one of a few choices (``choice``, from the bundle's public tests:
    Gradescope shows such a result only once the grades are published)."""
    from dpo_teach.grading.judge import load_tests

    choices = multiple_choice(load_tests(bundle))
    return {"assignment": stem, "questions": [{**q, "choice": q["name"] in choices} for q in read_questions(master)]}


def solution_lines(master: Path) -> list[str]:
    """Every line of a master that a student must not see: solution code, '# SOLUTION' answers, hidden tests and
    rubrics (lines of 13 characters or more that are not imports, so that each is specific), less the lines the
    student sees anyway elsewhere in the master (a public test's set-up, ``optimizer.step()`` in a given cell)."""
    lines, seen = _secret_and_seen(master)
    return [line for line in lines if line not in seen]


def course_secrets(masters: Path = MASTERS) -> set[str]:
    """:func:`solution_lines` of every master, less the lines any master shows its students."""
    secret, seen = set(), set()
    for master in sorted(Path(masters).glob("*.ipynb")):
        lines, shown = _secret_and_seen(master)
        secret.update(lines)
        seen |= shown
    return secret - seen


def _secret_and_seen(master: Path) -> tuple[list[str], set[str]]:
    import nbformat

    lines, seen, block, tests = [], set(), False, False
    for cell in nbformat.read(master, as_version=4).cells:
        source = cell.source.strip()
        if cell.cell_type == "raw":
            block = {"# BEGIN SOLUTION": True, "# END SOLUTION": False}.get(source, block)
            tests = {"# BEGIN TESTS": True, "# END TESTS": False}.get(source, tests)
            continue
        if tests and source.splitlines()[0].lstrip("# ").upper().startswith("HIDDEN"):
            lines += source.splitlines()[1:]
        elif block and cell.cell_type == "markdown":
            lines += source.splitlines()
        elif block and cell.cell_type == "code":
            inside = False
            for line in source.splitlines():
                if line.strip().startswith("# BEGIN SOLUTION"):
                    inside = True
                elif line.strip() == "# END SOLUTION":
                    inside = False
                elif inside or line.rstrip().endswith("# SOLUTION"):
                    lines.append(line.split("# SOLUTION")[0])
                else:
                    seen.add(line.strip())
        else:
            seen.update(line.strip() for line in source.splitlines())
    return [line.strip() for line in lines if len(line.strip()) > 12 and not line.strip().startswith("import ")], seen


def _portable(nb) -> None:
    """A student notebook that runs under any file name and says how to install the package where it is missing.

    The grader cell lets a check pass a correct answer that prints (``checks_ignore_prints``) and finds the
    notebook's file by its otter metadata (``find_notebook``), not by the master's file
    name; the set-up check comes before the first code cell (both in ``dpo_teach/grading/student.py``).
    """
    import nbformat

    (cell,) = [c for c in nb.cells if c.cell_type == "code" and _GRADER.search(c.source)]
    assert cell.source.startswith("import otter\n"), "the master's grader cell starts with `import otter`"
    cell.source = _GRADER.sub(lambda m: f'otter.Notebook(find_notebook("{m["stem"]}"))', cell.source).replace(
        "import otter\n", "import otter\n\nfrom dpo_teach.grading.student import checks_ignore_prints, "
        "find_notebook\n\nchecks_ignore_prints()  # a print left in a correct answer does not fail its check\n", 1)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")  # after the title
    nb.cells.insert(first_code, nbformat.v4.new_code_cell(SETUP_CHECK))


def _normalized_student_notebook(path: Path, stem: str) -> str:
    """otter assign gives generated cells random ids; number them so that the output is reproducible."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    _portable(nb)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stem[:2]}-{i:03d}"
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


_SOLUTION_SUFFIX = re.compile(r"\s*# ?SOLUTION.*$")  # otter's solution line: "# SOLUTION" (or "#SOLUTION") onwards


def _answer_key(path: Path) -> str:
    """otter's solution notebook as an answer key: the answers in place, without the markers of its solutions
    (``# BEGIN SOLUTION``, ``# END SOLUTION``, a line's ``# SOLUTION``) and without the stubs a student starts from
    (``# BEGIN PROMPT`` … ``# END PROMPT``), read by otter's own rules. Cells, their ids and tags are otter's: it
    grades as it did."""
    import nbformat
    from otter.assign.solutions import begin_solution_regex

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept, in_prompt = [], False
        for line in cell.source.split("\n"):
            end = line.rstrip()
            if end.endswith(("# BEGIN PROMPT", "# END PROMPT")):
                in_prompt = end.endswith("# BEGIN PROMPT")
            elif not (in_prompt or begin_solution_regex.match(line) or end.endswith("# END SOLUTION")):
                kept.append(_SOLUTION_SUFFIX.sub("", line))
        cell.source = "\n".join(kept)
    return nbformat.writes(nb) + "\n"


def _repack(zip_path: Path) -> bytes:
    """Otter's bundle with sorted members, fixed timestamps and permissions."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(src.namelist()):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = (0o755 if name == "run_autograder" else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, src.read(name))
    return buffer.getvalue()


def assign(masters: Path = MASTERS, notebooks: Path = NOTEBOOKS, autograder: Path = AUTOGRADER,
           solutions: Path | None = None, quiet: bool = True) -> list[str]:
    """Run ``otter assign`` on every ``masters/*.ipynb``; write student notebooks, bundles and manifests.

    ``solutions`` (optional): also write the solution notebooks there (the answers in place, without otter's
    solution markers and the students' stubs: :func:`_answer_key`), e.g. to grade them as a full-score submission.
    Returns the assignment names.
    """
    from otter.assign import main as otter_assign

    names = []
    for master in sorted(Path(masters).glob("*.ipynb")):
        stem = master.stem
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "dist"
            sink = io.StringIO()
            quiet_stderr = contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext()
            with contextlib.redirect_stdout(sink), quiet_stderr:
                otter_assign(str(master), str(out), no_run_tests=True, no_pdfs=True)
            (bundle,) = (out / "autograder").glob("*.zip")
            atomic_write_text(Path(notebooks) / f"{stem}.ipynb",
                              _normalized_student_notebook(out / "student" / f"{stem}.ipynb", stem))
            with atomic_file(Path(autograder) / f"{stem}.zip") as tmp_zip:
                tmp_zip.write_bytes(_repack(bundle))
            atomic_write_json(Path(autograder) / f"{stem}.json", manifest(stem, master, bundle), sort_keys=False)
            if solutions is not None:
                Path(solutions).mkdir(parents=True, exist_ok=True)
                atomic_write_text(Path(solutions) / f"{stem}.ipynb", _answer_key(out / "autograder" / f"{stem}.ipynb"))
        names.append(stem)
    return names
