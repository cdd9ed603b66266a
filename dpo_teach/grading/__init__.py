"""Auto-grading with otter-grader: build student notebooks and autograder bundles, grade a folder of submissions.

Layout (``make assign`` writes the last three from the first; all four are committed)::

    course/masters/NN_name.ipynb      master notebooks: solutions, public and hidden tests (otter-assign format)
    notebooks/NN_name.ipynb           what students open: solutions replaced by stubs, public tests only
    course/autograder/NN_name.zip     otter's autograder bundle (all tests), repacked so that it is reproducible
    course/autograder/NN_name.json    manifest: the questions and their points, auto-graded and manual

Adding a graded notebook = adding a master and running ``make assign``. Only files named after a master are
written; other notebooks in ``notebooks/`` are never touched.

Grading (``dpo-teach grade DIR``) runs ``otter run`` on each notebook in its own process and kernel, under two
time limits: a per-cell limit inside the kernel (an endless loop raises ``TimeoutError`` and costs only the
points that depend on it) and a per-notebook wall-clock limit (the process group is killed; the notebook scores
0 with that reason). A file that is not a notebook, an unknown assignment or a crash is scored 0 with a reason;
nothing stops the batch. Results go to ``grades.csv`` and ``grades.json``, written atomically.
"""

from __future__ import annotations

from dpo_teach.grading.assign import AUTOGRADER, MASTERS, NOTEBOOKS, ROOT, assign, read_questions
from dpo_teach.grading.grade import find_submissions, format_table, grade, grade_submission, load_manifests

__all__ = ["AUTOGRADER", "MASTERS", "NOTEBOOKS", "ROOT", "assign", "find_submissions", "format_table", "grade",
           "grade_submission", "load_manifests", "read_questions"]
