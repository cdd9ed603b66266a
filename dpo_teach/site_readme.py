"""The site's pages that are written, not executed: from the README (the landing page, the comparison, TRL and real
checkpoints beyond the laptop, how instructors grade, each cut for readers by :func:`site_pages.for_readers`), the
Makefile's own ``make help`` (how to start the course) and the autograder manifests (each exercise set's questions and
points)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from dpo_teach import site_pages
from dpo_teach.grading import ROOT
from dpo_teach.site_pages import BEYOND

DOWNLOADS = "downloads"  # the student release as a zip, and its notebooks one by one
CHECKING = ("## Checking your answer\n\nEach auto-graded exercise is a function (or an answer) in a cell of the "
            "notebook, followed by a `grader.check(\"question\")` cell that runs the public tests and prints what "
            "failed (the open questions graded by hand have none). The pages of this site show those checks on the "
            "unsolved stubs, as a student sees them first (open one to read its feedback); after each exercise the "
            "notebook goes on with the package's reference version, so every later cell runs.")
# What the download leaves out, said under the README's "For instructors: grading" on grading.html.
INSTRUCTORS = ("Grading needs the instructor's copy of the course repository, which holds what the download leaves "
               "out: each exercise's solution, its hidden tests and the rubrics of the questions graded by hand. "
               "From its README:")
START = ("lab", "demo")  # the commands that "Get the course" gives, described by the Makefile's own `make help`


class _Sections(dict):
    def __missing__(self, title: str):
        raise KeyError(f"README.md has no '## {title}' section, which the site quotes (a heading renamed?); its "
                       f"sections: {', '.join(repr(t) for t in self if t)}")


def readme_sections(path: Path = ROOT / "README.md") -> dict[str, str]:
    """The README by section, read once per build: ``{"": its introduction, title: its "## title" section, heading
    included}``; a missing title raises a ``KeyError`` that names it and the sections there are."""
    intro, *sections = path.read_text(encoding="utf-8").split("\n## ")
    readme = _Sections({"": intro})
    for section in sections:
        title, _, body = section.partition("\n")
        readme[title] = f"## {title}\n\n{body.strip()}"
    return readme


def markdown_page(*sections: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(s) for s in sections])


def link_pages(markdown: str, names: list[str], graded: dict[str, dict]) -> str:
    """`` `NN_name` `` in the README's course map -> a link to its page (and to its exercise page, if it is in
    ``graded``); the README's pointer to its "PPO vs DPO" section -> a link to that page."""
    for name in names:
        exercises = f" ([exercises](grading_{name}.html))" if name in graded else ""
        markdown = markdown.replace(f"`{name}`", f"[{name}]({name}.html){exercises}")
    return markdown.replace('"PPO vs DPO" below', "[PPO vs DPO](ppo_vs_dpo.html)")


def make_help(targets: tuple[str, ...] = START) -> str:
    """The Makefile's own description of each of ``targets`` (its ``make help`` lines, continuations included) as
    commands with comments: ``make lab    # open the notebooks in JupyterLab``. Every help line is a ``make X``
    line or an indented continuation of one; any other line is an error (it would belong to no command)."""
    described, target = {}, None
    for line in re.findall(r'^\t@echo "(.*)"$', (ROOT / "Makefile").read_text(encoding="utf-8"), re.MULTILINE):
        start = re.match(r"make ([\w-]+)(?: \S+=\S+)* +", line)  # a command and its settings (BASE=<commit>)
        if not start and (target is None or not line.startswith(" ")):
            raise ValueError(f"the Makefile's help line {line!r} is neither a `make TARGET  what it does` line nor "
                             "an indented continuation of one: write it as one of those (dpo_teach/site_readme.py "
                             "reads them)")
        if start:
            target = start[1]
            described[target] = []
        at = start.end() if start else len(line) - len(line.lstrip())
        described[target].append(f"{line[:at]}# {line[at:]}".replace("\\`", "`"))
    missing = [t for t in targets if t not in described]
    if missing:
        raise ValueError(f"the Makefile's help describes no target {missing}: add an `@echo \"make ...\"` line to it")
    return "\n".join(line for t in targets for line in described[t])


def get_the_course(readme: dict[str, str], zip_bytes: int) -> str:
    """The index's section on downloading the course (the zip of :func:`write_downloads`) and starting it."""
    requirements = next(p for p in readme["Quick start"].split("\n\n") if p.startswith("Requirements:"))
    return (f"## Get the course\n\n[Download the course]({DOWNLOADS}/dpo-teach.zip) (a zip, {zip_bytes / 1e6:.1f} MB): "
            "the notebooks, the `dpo_teach` package they import, the README and the set-up. The exercises are stubs, "
            "without their solutions; the package holds its own reference version of each graded function, public "
            "by design (a notebook falls back on it after each exercise), and an answer that calls it scores 0. "
            "Unzip it and, in its folder `dpo-teach`, run\n\n"
            f"```bash\n{make_help()}\n```\n\nWhichever runs first sets up `.venv` (it installs everything the course "
            f"needs); `make help` lists every command. {requirements} Each notebook page also links its own `.ipynb`, "
            "to run in that folder (the notebooks import the package).")


def landing(readme: dict[str, str], titles: dict[str, str], graded: dict[str, dict],
            zip_bytes: int) -> nbformat.NotebookNode:
    """``index.html``: the README's introduction, course map and toy world, how to get the course, every page."""
    intro = readme[""].replace("# dpo-teach", "# dpo-teach: the course")
    pages = "\n".join(f"- [{title}]({name}.html)" for name, title in titles.items())
    course_map = link_pages(site_pages.for_readers(readme["Course map"]), list(titles), graded)
    return markdown_page(intro, get_the_course(readme, zip_bytes), course_map,
                         site_pages.for_readers(readme["The toy world"]),
                         "## Pages\n\n" + pages
                         + "".join(f"\n- [{title}]({stem}.html)" for stem, _, title in site_pages.WRITTEN_PAGES)
                         + "\n- [Exercises and grading](grading.html)")


def grading_page(name: str, title: str, questions: dict[str, dict]) -> nbformat.NotebookNode:
    """``grading_NN_name.html``: the exercises of one notebook (``questions``: its manifest's, by name)."""
    rows = "\n".join(f"| `{q}` | {about['points']} | {'by hand' if about['manual'] else 'automatically'} |"
                     for q, about in questions.items())
    return markdown_page(
        f"# Exercises of [{title}]({name}.html)\n\n| question | points | graded |\n|---|---|---|\n{rows}", CHECKING,
        "How instructors grade these exercises, and every other set: [Exercises and grading](grading.html).")


def grading_index(readme: dict[str, str], titles: dict[str, str], graded: dict[str, dict]) -> nbformat.NotebookNode:
    """``grading.html``: every exercise set (``graded``: each graded notebook's questions, from its manifest), how a
    student checks an answer, and how an instructor grades (the README's section, for readers)."""
    rows = []
    for name, questions in graded.items():
        count = f"{len(questions)} question{'s' * (len(questions) > 1)}"
        points, by_hand = (sum(q[key] for q in questions.values()) for key in ("points", "manual"))
        rows.append(f"| [{titles[name]}]({name}.html) | [{count}](grading_{name}.html) | {points} | {by_hand} |")
    table = "| notebook | exercises | points | graded by hand |\n|---|---|---|---|\n" + "\n".join(rows)
    # marked for instructors: the masters and the student versions are theirs to know; the test suite is not (what
    # it guarantees them is said in their words)
    heading, _, section = site_pages.for_readers(readme["For instructors: grading"],
                                                 site_pages.FOR_DEVELOPERS).partition("\n\n")
    return markdown_page(f"# Exercises and grading\n\n{table}", CHECKING, f"{heading}\n\n{INSTRUCTORS}\n\n{section}")


def titled(section: str, stem: str) -> str:
    """A README ``section`` as the page ``stem`` of :data:`site_pages.WRITTEN_PAGES`: its "## heading" becomes the
    page's one "# title" (the page's own title, as in the header's links)."""
    title = next(t for s, _, t in site_pages.WRITTEN_PAGES if s == stem)
    body = section.partition("\n")[2].lstrip()  # below the heading
    return f"# {title}\n\n{body}"


def beyond_page(readme: dict[str, str]) -> nbformat.NotebookNode:
    """``beyond_the_laptop.html``: the README's section on TRL, real checkpoints and data, its GPU script included."""
    return markdown_page(titled(site_pages.for_readers(readme[BEYOND]), "beyond_the_laptop"))


def results_page(readme: dict[str, str]) -> nbformat.NotebookNode:
    return markdown_page(titled(site_pages.for_readers(readme["PPO vs DPO (instructor demo)"]), "ppo_vs_dpo").replace(
        "\n\nMeasured", "\n\n![reward–KL frontier, fluency and sample efficiency](images/frontier.png)\n\nMeasured", 1))
