"""Auto-grading with otter-grader: build student notebooks and autograder bundles, grade a folder of submissions.

Layout (``make assign`` writes the last three from the first; all four are committed)::

    course/masters/NN_name.ipynb      master notebooks: solutions, public and hidden tests (otter-assign format)
    notebooks/NN_name.ipynb           what students open: solutions replaced by stubs, public tests only
    course/autograder/NN_name.zip     otter's autograder bundle (all tests), repacked so that it is reproducible
    course/autograder/NN_name.json    manifest: the questions and their points, auto-graded and manual

Adding a graded notebook = adding a master and running ``make assign``. Only files named after a master are
written; other notebooks in ``notebooks/`` are never touched.

Grading (``dpo-teach grade DIR``, ``grade.py``; the folder read by ``submissions.py``, the bundles by
``manifests.py``, the batch journaled by ``journal.py``, the reports written by ``reports.py``, each student's
feedback by ``feedback.py``) runs each notebook in
a process of its own (a fork of a zygote that loaded the libraries once per grader, ``zygote.py``) inside a sandbox
(``sandbox.py``: Linux namespaces; no network, no other process in view, every file system read-only, of the course's
folder only the package, the student notebooks and the Python environment in view, the temporary folder, people's homes
and ``/run`` emptied but for those, ``/dev`` holding only null, zero, full and the random devices, no Unix socket
(seccomp), other submissions hidden), under two time limits: a per-cell limit (an endless loop raises ``TimeoutError``
and costs only the points that depend on it) and a per-notebook wall-clock limit (the sandbox is killed with
everything in it; the notebook scores 0 with that reason). The tests of the bundle are sent in only after the
notebook's cells have run, one question at a time, and run against private references taken before the student's code
(``runner.py``, started and read by ``judge.py``; without the sandbox ``strays.py`` ends whatever a notebook left
running); ``grade.py`` scores from the manifest. A static scan (``scan.py``, its rules in ``rules.py``) flags code
that touches the grading machinery and answers that call the package's own implementation. A file that is not a
notebook is skipped, with what to do; an unknown assignment or a crash is scored 0 with a reason (status ``crashed``
when the notebook's own code ended its process, ``error`` when the grader failed or cannot tell the assignment). Only
the machine stops a batch (a sandbox that fails as a notebook starts: no student gets a 0 for it). Every row is
journaled so that an interrupted or stopped batch resumes (a row the grader failed on is graded again), and the same
folder graded again grades only its new or changed notebooks. Students in a flat folder are named by
``student_name``. Results go to ``grades.csv``, ``grades_by_student.csv`` and ``grades.json``, written atomically,
and a file per student to ``feedback/``.
"""

from __future__ import annotations

from dpo_teach.grading.assign import AUTOGRADER, MASTERS, NOTEBOOKS, ROOT, assign, read_questions
from dpo_teach.grading.grade import grade, grade_submission
from dpo_teach.grading.manifests import load_manifests
from dpo_teach.grading.reports import format_table
from dpo_teach.grading.sandbox import SandboxUnavailable
from dpo_teach.grading.submissions import find_submissions, is_notebook, student_name

__all__ = ["AUTOGRADER", "MASTERS", "NOTEBOOKS", "ROOT", "assign", "find_submissions", "format_table", "grade",
           "grade_submission", "is_notebook", "load_manifests", "read_questions", "SandboxUnavailable", "student_name"]
