"""The course site (dpo_teach/site.py, site_pages.py, site_readme.py), built from this suite's own notebook runs and
read in a real browser.

The site is built from the executed copies that ``notebook_runs`` (conftest.py) keeps, so no notebook runs twice:
this module is one of the ``LAST`` work units, after the units that run the notebooks. Headless Chromium (Debian's
``chromium``, driven by Playwright; ``make test`` installs it as root) opens every page from 127.0.0.1 with every
other host blocked, at a desktop's width and then at a phone's, and each page's full-length screenshots are written to
``results/site-test/`` for a person to look at, with the build's time and size in ``build.json``.
"""

from __future__ import annotations

import functools
import html
import json
import os
import re
import shutil
import sys
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest
from filelock import FileLock
from wcag import contrast

from dpo_teach import site, site_pages, site_readme
from dpo_teach.grading import AUTOGRADER, MASTERS, NOTEBOOKS, load_manifests
from dpo_teach.grading.assign import solution_lines
from dpo_teach.grading.release import find_leaks, released_files
from dpo_teach.world import cache_dir

ARTIFACTS = Path(os.environ.get("DPO_TEACH_SITE_ARTIFACTS", NOTEBOOKS.parent / "results" / "site-test"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
RAW_MATH = re.compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")
PHONE = {"width": 390, "height": 844}
README = site.ROOT / "README.md"


@functools.cache
def titles() -> dict[str, str]:
    """``{notebook: its title}``, read when a test first needs them (not when a worker imports this module)."""
    return {path.stem: site_pages.first_heading(nbformat.read(path, as_version=4), path.stem)
            for path in site.notebook_paths()}


@pytest.fixture(scope="module")
def build_run(notebook_runs, tmp_path_factory):
    """The site of the suite's fast-mode runs of every notebook (each run's π_ref cache as the run recorded it):
    ``{"out": its folder, "pages", "readme_reads": how often the build read README.md}``."""
    runs = {path.stem: notebook_runs.get(path, fast=True) for path in site.notebook_paths()}
    stopped = {name: run["error"] for name, run in runs.items() if run["error"]}
    assert not stopped, f"notebooks that did not run to the end: {stopped}"
    out = tmp_path_factory.mktemp("site") / "site"
    reads, read = [], Path.open

    def counted(path, *args, **kwargs):  # Path.read_text opens through Path.open
        reads.extend([path] if Path(path).absolute() == README else [])
        return read(path, *args, **kwargs)

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "open", counted)
        pages = site.build({name: run["nb"] for name, run in runs.items()}, out, mode="fast",
                           caches={name: run["cache"] for name, run in runs.items()})
    seconds = time.perf_counter() - start
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (ARTIFACTS / "build.json").write_text(json.dumps({
        "render_s": round(seconds, 1), "notebook_run_s": {n: round(r["seconds"], 1) for n, r in runs.items()},
        "bytes": size, "pages": len(pages)}, indent=1))
    return {"out": out, "pages": pages, "readme_reads": len(reads)}


@pytest.fixture(scope="module")
def built(build_run):
    """``(site folder, pages)``."""
    return build_run["out"], build_run["pages"]


def test_importing_this_module_reads_no_notebook(monkeypatch):
    """Every xdist worker imports this module, most of them only to run other modules' tests: nothing is read then."""
    import importlib.util

    reads, read = [], nbformat.read
    monkeypatch.setattr(nbformat, "read", lambda *args, **kwargs: reads.append(args[0]) or read(*args, **kwargs))
    spec = importlib.util.spec_from_file_location("test_site_imported_again", __file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert not reads, f"importing test_site.py read {len(reads)} notebooks"


def test_the_readmes_frontier_figure_is_what_the_shipped_results_draw(built):
    """docs/images/frontier.png, the README's figure, had been drawn from an older results file by an older plot:
    its points were not the numbers of the table under it."""
    import matplotlib.image
    import numpy as np

    drawn = matplotlib.image.imread(built[0] / "images" / "frontier.png")  # from the shipped results, now
    shown = matplotlib.image.imread(site.ROOT / "docs" / "images" / "frontier.png")
    assert drawn.shape == shown.shape and np.array_equal(drawn, shown), \
        "docs/images/frontier.png differs from what the shipped results draw: run `make readme-images`"


def test_the_readme_is_read_once_per_build(build_run):
    assert build_run["readme_reads"] == 1


def test_every_notebook_has_a_page_with_its_outputs(built):
    out, pages = built
    names = {p.stem for p in pages}
    assert {p.stem for p in site.notebook_paths()} <= names and {"index", "ppo_vs_dpo"} <= names
    for path in site.notebook_paths():
        page = (out / f"{path.stem}.html").read_text(encoding="utf-8")
        assert "Executed in <b>fast mode" in page, path.stem  # which mode produced the numbers
        assert "application/vnd.jupyter.widget" not in page, f"{path.stem}: a widget left without its static state"
        assert "(forced: DPO_TEACH_CLAIMS" not in page, f"{path.stem}: the suite's forced claim notes are shown"
    for path in pages:  # a browser that finds no icon asks for /favicon.ico, which the site does not have
        assert re.search(r'<link [^>]*rel="icon"', path.read_text(encoding="utf-8")), path.stem
    for name in ("01_kl_objective", "05_dpo_on_gpt2", "06_ppo_vs_dpo"):  # figures are embedded PNGs
        assert "data:image/png" in (out / f"{name}.html").read_text(encoding="utf-8"), f"{name}: no figure"


def test_a_build_replaces_only_a_site_and_only_once_it_is_finished(tmp_path, monkeypatch):
    """The build emptied --out first: a folder of other files was deleted (`--out ~/notes`), and a build that failed
    left no site at all, not the earlier one."""
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("the earlier site")
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(site, "copy_static", lambda folder: pytest.fail("the build started"))
    with pytest.raises(FileExistsError, match=r"holds 1 file \(notes.txt\) that the site build does not write"):
        site.build({}, out, mode="fast")
    (out / "notes.txt").unlink()

    def fails(folder):
        raise RuntimeError("the build failed half-way")

    monkeypatch.setattr(site, "copy_static", fails)
    with pytest.raises(RuntimeError, match="half-way"):
        site.build({}, out, mode="fast")
    assert [p.name for p in tmp_path.iterdir()] == ["site"] and [p.name for p in out.iterdir()] == ["index.html"]
    assert (out / "index.html").read_text() == "the earlier site"


def test_no_solution_text_anywhere_in_the_site(built):
    out, _ = built
    secrets = {master.stem: solution_lines(master) for master in sorted(MASTERS.glob("*.ipynb"))}
    assert all(secrets.values()), f"masters without solution lines to look for: {secrets}"
    assert len(site.secret_lines()) > 0.9 * len(set().union(*secrets.values())), "most lines must stay secret"
    assert not site.leaks(out)
    # ... and the search finds a solution line where one is: in a code cell (highlighted, split into spans) and in
    # a markdown cell, rendered as every page is
    line = secrets["03_deriving_dpo"][0]
    planted = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(line), nbformat.v4.new_markdown_cell(line)])
    (out / "planted.html").write_text(site.render(planted, "planted"), encoding="utf-8")
    try:
        assert site.page_text(out / "planted.html").count(line) == 2 and site.leaks(out)
    finally:
        (out / "planted.html").unlink()


def test_no_page_shows_the_build_machine(built):
    """Paths of the machine that built the site (its π_ref cache, its Python, temporary folders, the kernel's cell
    files, doctest's own frames in exercise feedback) mean nothing to a reader; 00's report says whose machine it is."""
    out, pages = built
    machine = [str(cache_dir()), sys.prefix, "/tmp/", "ipykernel_", "doctest.py"]
    shown = {p.stem: [m for m in machine if m in site.page_text(p)] for p in pages}
    assert not any(shown.values()), {k: v for k, v in shown.items() if v}
    start = site.page_text(out / "00_start_here.html")
    assert start.count(site_pages.MACHINE_NOTE) == 2  # the versions, the report
    # the report's π_ref cache, whichever worker ran the notebook: the default one, as a student's reads
    assert re.findall(r"cache \(π_ref\)\s+(\S+)", start) == [site_pages.DEFAULT_CACHE], start.split("cache (π_ref)")[1:]
    feedback = site.page_text(out / "01_kl_objective.html")
    assert 'File "<cell>", line' in feedback and "NotImplementedError: Exercise 1.1" in feedback  # what matters stays


def test_build_machine_paths_become_a_readers_names():
    doctest_frame = ['      File "/usr/lib/python3.11/doctest.py", line 1353, in __run',
                     '        exec(compile(example.source, filename, "single",']
    feedback = ["    Traceback (most recent call last):", *doctest_frame,
                '      File "<doctest q 0[1]>", line 1, in <module>', "        f(1)",
                '      File "/tmp/ipykernel_8714/15115880.py", line 6, in f', "        raise ValueError",
                "    ValueError"]
    kept = [line.replace("/tmp/ipykernel_8714/15115880.py", "<cell>") for line in feedback if line not in doctest_frame]
    assert site_pages.clean_text("\n".join(feedback) + "\n") == "\n".join(kept) + "\n"
    printed = {f"π_ref: loaded from cache {cache_dir()}/reference-tiny-70065":
               "π_ref: loaded from cache ~/.cache/dpo-teach/reference-tiny-70065",
               f"cache {cache_dir()}": "cache ~/.cache/dpo-teach",
               f"kernel python: {sys.prefix}/bin/python": "kernel python: .venv/bin/python",
               "/tmp/dpo-teach-07-jeslvsp3/train.jsonl: 1997 rows": "<temporary folder>/train.jsonl: 1997 rows",
               "/tmp/pytest-of-root/pytest-3/cache0/reference-tiny-70065": "~/.cache/dpo-teach/reference-tiny-70065",
               "data in /tmp/pytest-of-root/pytest-3/private0": "data in <temporary folder>",  # not a cache
               "wrote /tmp/pytest-of-root/pytest-3/run0/metrics.json.": "wrote <temporary folder>/metrics.json.",
               # a folder at the end of a sentence, or before a comma, keeps its punctuation
               "data in /tmp/pytest-of-root/pytest-3/private0.": "data in <temporary folder>.",
               "saved in /tmp/dpo-teach-x/run0, then read": "saved in <temporary folder>, then read",
               f"π_ref is cached in {cache_dir()}.": "π_ref is cached in ~/.cache/dpo-teach.",
               f"run it in {site.ROOT}.": "run it in dpo-teach."}
    assert {line: site_pages.clean_text(line) for line in printed} == printed
    assert site_pages.clean_text("/tmp/x/train.jsonl", markup=True) == "&lt;temporary folder&gt;/train.jsonl"
    # a file directly in a temporary folder keeps its name (before: "<temporary folder>" alone)
    assert site_pages.clean_text("wrote /tmp/train.jsonl.") == "wrote <temporary folder>/train.jsonl."
    assert site_pages.clean_text("in /tmp, then /tmpfiles/x.json") == "in <temporary folder>, then /tmpfiles/x.json"
    # a folder with a dot in its name is a folder (mktemp -d makes /tmp/tmp.k3JdS9), not a file's name; /var/tmp is not
    # a temporary folder of this rule; in HTML a path ends at an entity
    assert site_pages.clean_text("/tmp/tmp.k3JdS9/run/train.jsonl") == "<temporary folder>/train.jsonl"
    assert site_pages.clean_text("in /tmp/a.b/c, then") == "in <temporary folder>, then"
    assert site_pages.clean_text("/var/tmp/x.json") == "/var/tmp/x.json"
    assert site_pages.clean_text("&quot;/tmp/x/y&quot;", markup=True) == "&quot;&lt;temporary folder&gt;&quot;"


def test_a_deeper_temporary_folder_reads_the_same_whichever_rule_comes_first(monkeypatch):
    """With $TMPDIR a folder inside /tmp (as mktemp makes them), both rules apply: the deeper one goes first, and either
    order gives the same page (before, the order was a set's, and the result changed with PYTHONHASHSEED)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", "/tmp/tmp.Xk3j9")
    rules = site_pages.machine_paths()
    temporary = [rule for rule in rules if rule[1] == "<temporary folder>"]
    assert [rule[0].pattern.count("Xk3j9") for rule in temporary] == [1, 0], "the deeper folder's rule first"
    others = [rule for rule in rules if rule not in temporary]
    for order in (temporary, temporary[::-1]):
        assert site_pages.clean_text("/tmp/tmp.Xk3j9/run/train.jsonl", rules=others + order) == (
            "<temporary folder>/train.jsonl")


def test_a_cache_reads_as_the_default_one_wherever_it_was(tmp_path, monkeypatch):
    """Under pytest-xdist the notebook may have run in another worker, with another $DPO_TEACH_CACHE than the worker
    that builds the site (``make site`` runs and builds in one process): the cache folder that the run recorded reads
    as the default cache, in each form of 00's set-up report, whether or not it is still on disk where the site is
    built; a folder that only looks like a cache, and that no run recorded, is not called one."""
    from dpo_teach.setup_check import setup_report

    other = tmp_path / "popen-gw0" / "dpo-teach-cache0"  # as the worker that ran 00 names its cache
    with monkeypatch.context() as run_elsewhere:
        run_elsewhere.setenv("DPO_TEACH_CACHE", str(other))
        report = setup_report(probe_s=0.01)
    assert report["cache (π_ref)"] == str(other) and site_pages.DEFAULT_CACHE not in str(site.ROOT)
    assert not other.exists(), "the worker's cache is not on this disk"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("setup_report()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=f"{report}\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": str(report),
                                                     "text/markdown": report._repr_markdown_()})])])
    site_pages.clean_outputs(nb, caches=[other])  # as the run recorded it
    stream, shown = nb.cells[0].outputs
    for text in (stream.text, shown.data["text/plain"], shown.data["text/markdown"]):
        assert re.findall(r"cache \(π_ref\)[\s|]+(\S+)", text) == [site_pages.DEFAULT_CACHE], text
    rules = site_pages.machine_paths([other])
    assert site_pages.clean_text(f"cache {other}/", rules=rules) == f"cache {site_pages.DEFAULT_CACHE}/"
    assert site_pages.clean_text(f"wrote {other.parent}/x.json", rules=rules) == "wrote <temporary folder>/x.json"
    lookalike = tmp_path / "data"  # holds what a cache holds, but no run used it
    (lookalike / "reference-tiny-70065").mkdir(parents=True)
    (lookalike / "reference-tiny-70065" / "world.json").write_text("{}")
    assert site_pages.clean_text(f"read {lookalike}", rules=rules) == "read <temporary folder>"


def test_selections_show_their_chosen_label():
    """ipywidgets 8 saves a selection's ``index`` into ``_options_labels``, no ``value``: the page shows the label."""
    import ipywidgets as widgets

    controls = [widgets.SelectionSlider(options=["low", "mid", "high"], value="mid", description="setting"),
                widgets.Dropdown(options=[("PPO", 1), ("DPO", 2)], value=2, description="method"),
                widgets.FloatLogSlider(value=0.3, min=-2, max=1, description="β")]
    box = widgets.VBox(controls)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("box", outputs=[nbformat.v4.new_output(
        "display_data", data=box._repr_mimebundle_())])])
    nb.metadata["widgets"] = {site_pages.WIDGET_STATE: widgets.Widget.get_manager_state(widgets=[box, *controls])}
    site_pages.static_widgets(nb)
    shown = [out.data["text/plain"] for out in nb.cells[0].outputs]
    assert shown == ["setting mid", "method DPO", "β 0.3"] and "widgets" not in nb.metadata
    for control in (box, *controls):
        control.close()


def test_pass_and_fail_marks_are_drawn_not_typed():
    """otter's ✅/❌ (in its feedback, and in 00's text about it) need an emoji font, which many machines lack (they
    show as empty boxes): a page draws them, with their meaning for a screen reader; the head is left as it is."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("For each public test, ✅ or ❌."),
        nbformat.v4.new_code_cell('grader.check("q1")', outputs=[nbformat.v4.new_output(
            "stream", name="stdout", text="q1 results:\n    q1 - 1 result:\n        ✅ Test case passed\n"
                                          "    q1 - 2 result:\n        ❌ Test case failed\n")])])
    page = site.render(nb, "marks ✅")
    head, body = page.split("<body", 1)
    assert not re.findall("[✅❌]", body) and "<title>marks ✅</title>" in head
    for kind in ("passed", "failed"):  # one in the text, one in the feedback
        assert body.count(f'<svg class="site-mark site-{kind}" role="img" aria-label="{kind}"') == 2, kind
    assert "</svg> Test case passed" in body and "</svg> Test case failed" in body
    script = '<body><script>const mark = "✅";</script><p>✅</p></body>'  # a script's text is code, not a mark
    assert site_pages.draw_marks(script).startswith('<body><script>const mark = "✅";</script><p><svg')


def test_a_printed_table_keeps_its_columns_and_prose_wraps():
    """On a phone a printed table whose rows wrap no longer lines up: a printed output with columns (two or more
    lines with a gap of two spaces or more) keeps its lines whole and scrolls; a printed sentence still wraps."""
    table = "    β  reward gain      KL\n  0.1       +0.688    7.57\n  1.0       +0.497    0.64\n"
    prose = "1997 training pairs, 400 held out; BT-noise ceiling 0.904\n"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(table)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text=text)]) for text in (table, prose)])
    page = site.render(nb, "columns")
    printed = re.findall(r'<div class="(jp-RenderedText jp-OutputArea-output[^"]*)"[^>]*>\s*<pre>(.*?)</pre>', page,
                         re.DOTALL)
    assert [(cls.endswith(" site-columns"), html.unescape(text)) for cls, text in printed] == [
        (True, table), (False, prose)]
    assert ".site-columns pre { white-space: pre;" in (site.ASSETS / "site.css").read_text(encoding="utf-8")


def test_a_figure_is_described_by_its_section_titles_and_axes():
    """nbconvert leaves every figure "No description has been provided for this image" for a screen reader; a page
    says where the figure is and what its code titled it and its axes (an f-string's fields as …)."""
    png = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## A small $\\beta$ sweep\n\nText."),
        nbformat.v4.new_code_cell('ax.set(title=f"β = {beta:.3g}", xlabel="KL (nats)")\nplt.ylabel("reward")',
                                  outputs=[png]),
        nbformat.v4.new_markdown_cell("### Exercise 2.1\n\nImplement it."),  # a task in the section, not a section
        nbformat.v4.new_code_cell("plt.show()", outputs=[png])])
    page = site.render(site_pages.prepare(nb), "figures")
    assert re.findall(r'<img [^>]*alt="([^"]*)"', page) == [
        "Figure in the section “A small β sweep”, titled β = …, axes x: KL (nats); y: reward",
        "Figure in the section “A small β sweep”"]
    assert "No description has been provided" not in page


def test_a_figure_drawn_by_a_method_a_function_or_the_package_is_described_too():
    """``ax.set_title("…")`` and ``ax1.set_xlabel("…")`` are how most of the course's figures are labelled (before,
    only ``plt.title``/``ax.set(title=…)`` were read: 15 of 23 figures got no words); a figure drawn by a function
    that an earlier cell defines is described by that function's labels, and one drawn by the package by what its
    docstring says it draws."""
    def png():
        return nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("## Curves"),
        nbformat.v4.new_code_cell('fig, (ax0, ax1) = plt.subplots(1, 2)\nax0.set_title("loss")\n'
                                  'ax1.set_xlabel("step")\nax1.set_ylabel("KL (nats)")', outputs=[png()]),
        nbformat.v4.new_code_cell('def show_margin(beta):\n    plt.plot([0, 1])\n'
                                  '    plt.gca().set_title(f"β = {beta}")\n    plt.gca().set_xlabel("margin")'),
        nbformat.v4.new_code_cell("show_margin(0.1)", outputs=[png()]),
        nbformat.v4.new_code_cell("fig = dpo_teach.plots.plot_dpo_history(history)", outputs=[png()]),
        nbformat.v4.new_code_cell("draw_dpo_panels(axes, history)", outputs=[png()])])
    site_pages.describe_figures(nb)
    alts = [cell.outputs[0].metadata["image/png"]["alt"] for cell in nb.cells if cell.get("outputs")]
    assert alts == [
        "Figure in the section “Curves”, titled loss, axes x: step; y: KL (nats)",
        "Figure in the section “Curves”, titled β = …, axes x: margin",
        "Figure in the section “Curves”, drawing Loss (with the ln 2 start), reward accuracy, margins and "
        "chosen/rejected log-probs against the step",
        "Figure in the section “Curves”, drawing Loss (ln 2 marked), reward accuracy, implicit rewards and "
        "chosen/rejected log-probs of history (train_dpo's) in four axes (DPO_PANELS), as moving averages over window "
        "steps"]


def test_a_keyboard_can_skip_the_header_and_a_screen_reader_hears_each_link_in_full():
    """The header holds a dozen links before the content, and a notebook's link said only "01" (its title was a
    tooltip, which neither the keyboard's focus nor a screen reader shows): the first link skips to the content, and
    each link whose label is short is named in full; on a short window (a laptop at 200 %) the header scrolls away."""
    titles = {"01_kl_objective": "The KL objective", "02_bradley_terry": "Bradley–Terry"}
    page = site.render(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# The KL objective")]),
                       "The KL objective", nav=site_pages.header_links(titles, "01_kl_objective", False))
    body = page.split("<body", 1)[1]
    assert re.search(r"<a [^>]*>", body)[0] == '<a class="site-skip" href="#content">'
    assert '<main id="content" tabindex="-1">' in body
    nav = re.search(r'<nav aria-label="Course pages">(.*?)</nav>', body, re.DOTALL)[1]
    named = [(re.search(r'href="([^"]+)"', a)[1], re.search(r'aria-label="([^"]+)"', a)[1])
             for a in re.findall(r"<a [^>]*>", nav)]
    assert named == [("index.html", "Home – dpo-teach: the course"),
                     ("01_kl_objective.html", "Notebook 01: The KL objective"),
                     ("02_bradley_terry.html", "Notebook 02: Bradley–Terry"),
                     ("ppo_vs_dpo.html", "PPO vs DPO: the shipped comparison"),
                     ("beyond_the_laptop.html", "At scale – Beyond the laptop: TRL, real checkpoints, real data")]
    css = (site.ASSETS / "site.css").read_text(encoding="utf-8")
    assert "only screen and (max-height: 500px)" in css and ".site-skip:focus" in css


def test_every_exercise_is_a_heading_and_no_heading_level_is_skipped():
    """A screen reader's list of headings, and JupyterLab's table of contents, lead to each exercise and question
    (they were bold text, found only by reading on); and the outline never jumps a level (## to ####)."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert not re.findall(r"^\*\*(?:Exercise|Question) [^*]*\*\*", text, re.M), path.name
        levels = [len(m.group(1)) for m in re.finditer(r"^(#+) ", text, re.M)]
        assert levels[0] == 1 and all(b <= a + 1 for a, b in zip(levels, levels[1:])), (path.name, levels)
        assert re.search(r"^#{2,5} Exercise ", text, re.M), f"{path.name}: no exercise heading"
        # an exercise's heading heads that exercise alone: the section an exercise sits in is named for its topic
        # ("Exercise: conservative DPO" over "Exercise 7.2" read as two exercises in a screen reader's list)
        exercise = re.compile(r"Exercise(?::| \d| \()")  # "Exercise 7.2", "Exercise (practice)"; not "... feedback"
        above: list[tuple[int, str]] = []
        for m in re.finditer(r"^(#+) (.*)$", text, re.M):
            level, title = len(m.group(1)), m.group(2)
            above = [(lv, t) for lv, t in above if lv < level]
            if exercise.match(title):
                assert not any(exercise.match(t) for _, t in above), (path.name, above, title)
            above.append((level, title))


def test_every_page_has_one_title_heading_and_every_image_a_description(built):
    out, pages = built
    for page in pages:
        markup = page.read_text(encoding="utf-8")
        assert len(re.findall(r"<h1[ >]", markup)) == 1, f"{page.name}: {len(re.findall(r'<h1[ >]', markup))} <h1>"
        alts = re.findall(r'<img [^>]*?alt="([^"]*)"', markup)
        assert len(alts) == markup.count("<img "), f"{page.name}: an image without alt"
        assert all(alts) and not any("No description has been provided" in a for a in alts), (page.name, alts)
    for stem, _, title in site_pages.WRITTEN_PAGES:
        assert re.search(rf"<h1[^>]*>{re.escape(html.escape(title, quote=False))}", (out / f"{stem}.html").read_text(
            encoding="utf-8")), stem


def test_code_colours_read_on_the_code_background(built):
    """Every colour the pages' code highlighting uses has WCAG AA contrast (4.5:1) on the code cells' background, as
    the site's stylesheet finally defines them (JupyterLab's comments were 4.2:1)."""
    out, pages = built
    css = (out / "static" / "site.css").read_text(encoding="utf-8")
    defined = dict(re.findall(r"(--[\w-]+):\s*([^;}]+)", css))  # the last definition of each wins, as in the page

    def colour(value: str) -> str:
        while value.startswith("var("):
            value = defined[value[4:].split(")")[0].split(",")[0].strip()].strip()
        return {"white": "#ffffff", "black": "#000000", "blue": "#0000ff"}.get(value, value)

    background = colour("var(--jp-cell-editor-background)")
    rule = re.compile(r"\.highlight \.\w+ \{ color: var\((--jp-mirror-editor-[\w-]+)\)")
    used = {name for page in pages for name in rule.findall(page.read_text(encoding="utf-8"))}
    assert {"--jp-mirror-editor-comment-color", "--jp-mirror-editor-number-color"} <= used, used
    low = {name: round(contrast(colour(f"var({name})"), background), 2) for name in used}
    assert all(ratio >= 4.5 for ratio in low.values()), {n: r for n, r in low.items() if r < 4.5}


def test_a_readme_section_the_site_quotes_names_itself_when_missing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# course\n\n## Quick start\n\nmake lab\n", encoding="utf-8")
    sections = site_readme.readme_sections(readme)
    assert sections["Quick start"] == "## Quick start\n\nmake lab"
    with pytest.raises(KeyError, match="README.md has no '## Grading' section, which the site quotes.*'Quick start'"):
        sections["Grading"]


def test_readme_sections_leave_out_what_only_developers_need():
    section = ["## Title", "", "Run the notebooks. `DPO_TEACH_FAST=1` (what CI uses) shrinks the runs. The suite",
               "checks it. `tests/test_x.py` does, e.g. `make test`. Then read on.", "",
               "```bash", "make demo   # the demo", "make test   # the whole test suite",
               "            # (its second line)", "make lab", "```", "",
               "- **A**: one. The masters say so.", "- **B**: checked by pytest.", "",
               "| a | b |", "|---|---|", "| kept | row |", "| CI | row |"]
    kept = ["## Title", "",
            "Run the notebooks. `DPO_TEACH_FAST=1` shrinks the runs. The suite checks it. Then read on.",
            "", "```bash", "make demo   # the demo", "make lab", "```", "", "- **A**: one.", "",
            "| a | b |", "|---|---|", "| kept | row |"]
    assert site_pages.for_readers("\n".join(section)) == "\n".join(kept)


def test_the_instructors_section_keeps_what_they_need_and_no_test_file():
    """The README's grading section names test files where it says what is guaranteed to instructors; it puts them in
    a parenthesis, which the filter drops, so the guarantee itself stays on grading.html (before, two such sentences
    named the files in their own words and were dropped whole)."""
    section = site_pages.for_readers(site_readme.readme_sections()["For instructors: grading"],
                                     site_pages.FOR_DEVELOPERS)
    text = " ".join(section.split()).replace("`", "")
    for kept in ["no solution line or hidden test reaches a student notebook",
                 "The grader is tested against known attacks and against ordinary code that it must not flag",
                 "course/INSTRUCTOR.md says what no in-process grader can stop"]:
        assert kept in text, kept
    assert not site_pages.FOR_DEVELOPERS.search(section), site_pages.FOR_DEVELOPERS.findall(section)


def test_no_page_talks_about_how_the_course_was_made(built):
    """As the notebooks (test_notebooks_00_04.py), so the pages, with the words the README's sections on them are
    filtered for (:data:`site_pages.NOT_FOR_STUDENTS`); in grading.html's section marked for instructors only the
    developers' words (:data:`site_pages.FOR_DEVELOPERS`) are out, and what an instructor needs is kept."""
    out, pages = built
    texts = {p.stem: site.page_text(p) for p in pages}
    students, _, instructors = texts["grading"].partition("For instructors: grading")
    assert instructors, "grading.html has its section for instructors"
    texts["grading"] = students
    found = {name: [m[0] for m in site_pages.NOT_FOR_STUDENTS.finditer(text)][:5] for name, text in texts.items()}
    found["grading (for instructors)"] = [m[0] for m in site_pages.FOR_DEVELOPERS.finditer(instructors)][:5]
    assert not any(found.values()), {k: v for k, v in found.items() if v}
    # ... also where the README says it with the test suite's names: the guarantee on the student notebooks, and
    # where the grader's limits are written down
    for kept in ["`make assign` regenerates the student notebooks and the bundles", "their rubrics are in the master",
                 "no solution line or hidden test reaches a student notebook",
                 "`course/INSTRUCTOR.md` says what no in-process grader can stop"]:
        assert kept.replace("`", "") in " ".join(instructors.split()), kept
    assert "shorter training runs than the notebooks' default" in site.page_text(out / "index.html")  # the banner


def test_the_course_can_be_downloaded_without_solutions(built, tmp_path):
    """The zip holds exactly the student release (``release.released_files``): every notebook, nothing else (no
    master, test or autograder bundle), checked for solution lines; each notebook also lies beside it."""
    out, _ = built
    with zipfile.ZipFile(out / site_readme.DOWNLOADS / "dpo-teach.zip") as zipped:
        zipped.extractall(tmp_path)
        files = sorted(n for n in zipped.namelist() if not n.endswith("/"))
    tree = tmp_path / "dpo-teach"
    assert files == [f"dpo-teach/{name}" for name in released_files()]
    assert {f"dpo-teach/notebooks/{p.name}" for p in site.notebook_paths()} <= set(files)
    assert "dpo-teach/dpo_teach/losses.py" in files and "dpo-teach/Makefile" in files
    assert not [f for f in files if f.startswith(("dpo-teach/course/", "dpo-teach/tests/")) or f.endswith(".zip")]
    assert not find_leaks(tree)
    for path in site.notebook_paths():
        assert (out / site_readme.DOWNLOADS / path.name).read_bytes() == (tree / "notebooks" / path.name).read_bytes()
        assert f'href="downloads/{path.name}"' in (out / f"{path.stem}.html").read_text(encoding="utf-8")


def test_every_page_names_the_licences_and_links_them(built):
    """A visitor may reuse what they read: each page's foot says which licence covers what, as LICENSE does, and
    links LICENSE itself."""
    out, _ = built
    licence = (site.ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "MIT License" in licence and "(CC BY 4.0)" in licence
    assert (out / site_readme.DOWNLOADS / "LICENSE.txt").read_text(encoding="utf-8") == licence
    pages = sorted(out.glob("*.html"))
    assert len(pages) > 10
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert 'Code under the MIT License, course text under CC BY 4.0:\n  <a href="downloads/LICENSE.txt">' in text, \
            page.name


def test_notebook_07s_pointer_to_the_gpu_script_is_a_link_to_it(built):
    """07 sends its readers to the README's section with the GPU script; on the site that section is a page, linked
    from 07 and from the index, and it holds the script."""
    out, _ = built
    beyond = html.unescape(re.sub(r"<[^>]+>", "", (out / "beyond_the_laptop.html").read_text(encoding="utf-8")))
    assert "train_dpo_trl.py" in beyond and "trainer = DPOTrainer(model=MODEL" in beyond
    for name in ("07_variants_and_pitfalls", "index"):
        assert 'href="beyond_the_laptop.html"' in (out / f"{name}.html").read_text(encoding="utf-8"), name


def makefile_rules() -> dict[str, str]:
    """``{target: its prerequisites}`` for every rule of the Makefile."""
    rules = re.findall(r"^([^\s#:=][^:=\n]*):(?!=)(.*)$", (site.ROOT / "Makefile").read_text(), re.MULTILINE)
    return {target: needs for targets, needs in rules for target in targets.split()}


def test_the_index_says_how_to_get_and_start_the_course(built):
    """Under "Get the course": the zip, and the commands to start with the Makefile's own description of each
    (``make help``); each of them sets up .venv on first use, as the section says."""
    out, _ = built
    index = (out / "index.html").read_text(encoding="utf-8")
    section = re.search(r"<h2[^>]*>(Get the course</h2>.*?)<h2[ >]", index, re.DOTALL)
    assert section, "index.html has no 'Get the course' section followed by another"
    text = site.visible_text(section[1])
    commands = site_readme.make_help()
    assert re.match(r"make lab +# open the notebooks in JupyterLab\nmake demo +# ", commands), commands
    assert "Get the course\nDownload the course (a zip, " in text and 'href="downloads/dpo-teach.zip"' in section[1]
    assert f"in its folder dpo-teach, run\n{commands}\n" in text and "Whichever runs first sets up .venv" in text
    assert "Requirements: Python 3.11" in text
    rules = makefile_rules()
    starts = site_readme.START
    assert all("$(STAMP)" in rules[target].split() for target in starts), {t: rules[t] for t in starts}
    # the README's pointers to its sections: a link to the page, or the section below on the index
    page = site.page_text(out / "index.html")
    assert not re.findall(r'"[^"]+" below', page) and "The toy world\n" in page, "no section 'The toy world'"
    above, toy_world = page.split("The toy world\n", 1)
    assert "(below)" in above and "π_ref" in toy_world


def test_a_help_line_that_is_no_make_command_is_an_error(tmp_path, monkeypatch):
    """``make help``'s lines are read as commands and their continuations: any other line (a heading, text at the
    start of a line) would be described under no command, so the site's build says which line to fix."""
    def makefile(*lines: str) -> None:
        (tmp_path / "Makefile").write_text("help:\n" + "".join(f'\t@echo "{line}"\n' for line in lines))

    monkeypatch.setattr(site_readme, "ROOT", tmp_path)
    lab, more, demo = "make lab    open the notebooks", "           in JupyterLab", "make demo   the demo"
    makefile(lab, more, demo)
    assert site_readme.make_help() == ("make lab    # open the notebooks\n           # in JupyterLab\n"
                                       "make demo   # the demo")
    for stray, lines in [("Usage: make TARGET", ["Usage: make TARGET", lab, more, demo]),
                         ("(each sets up .venv)", [lab, more, "(each sets up .venv)", demo]),
                         ("  before any command", ["  before any command", lab, demo])]:
        makefile(*lines)
        with pytest.raises(ValueError, match=re.escape(repr(stray))):
            site_readme.make_help()


def test_every_make_command_on_the_site_is_in_the_makefile(built):
    """A ``make X`` that a page shows as code (the README's sections, the commands to start, grading) is a rule
    of the Makefile: none is retyped from memory."""
    _, pages = built
    shown = {}
    for path in pages:
        markup = path.read_text(encoding="utf-8")
        code = [site.visible_text(c) for _, c in re.findall(r"<(code|pre)\b[^>]*>(.*?)</\1>", markup, re.DOTALL)]
        for target in re.findall(r"^\s*make ([\w.-]+)", "\n".join(code), re.MULTILINE):
            shown.setdefault(target, set()).add(path.stem)
    rules = makefile_rules()
    assert {"lab", "demo", "gradescope"} <= set(shown), shown
    assert not {t: sorted(where) for t, where in shown.items() if t not in rules}


def test_exercise_pages_for_students_and_one_grading_page_for_instructors(built):
    """One page per graded notebook (the grader's own manifests) with each question and its points; grading.html
    links every one and says how instructors grade."""
    out, pages = built
    graded = {name: m["questions"] for name, m in load_manifests(AUTOGRADER).items() if name in titles()}
    assert graded and {p.stem for p in pages if p.stem.startswith("grading_")} == {f"grading_{n}" for n in graded}
    index = (out / "grading.html").read_text(encoding="utf-8")
    for name, questions in graded.items():
        page = (out / f"grading_{name}.html").read_text(encoding="utf-8")
        assert "Checking your answer" in page and 'href="grading.html"' in page and "For instructors" not in page
        assert f'href="grading_{name}.html"' in index
        rows = re.findall(r"^(\w+)\n(\d+)\n(?:automatically|by hand)$", site.visible_text(page), re.MULTILINE)
        assert rows == [(q, str(about["points"])) for q, about in questions.items()], name
    text = site.page_text(out / "grading.html")
    assert "dpo-teach grade SUBMISSIONS_DIR" in text and "make gradescope" in text
    assert site_readme.INSTRUCTORS in text
    assert not re.search(r"tests/|BEGIN SOLUTION|DPO_TEACH_STRICT|record mode", text)


def test_a_notebooks_assets_are_copied_where_links_are_refused(tmp_path, monkeypatch):
    """Windows without Developer Mode refuses symbolic links (WinError 1314): notebook 06 still finds the shipped
    results beside it."""

    def refused(self, target, target_is_directory=False):
        raise OSError(1314, "A required privilege is not held by the client")

    monkeypatch.setattr(Path, "symlink_to", refused)
    site.link_assets(NOTEBOOKS / "06_ppo_vs_dpo.ipynb", tmp_path)
    shipped = NOTEBOOKS / "assets" / "compare_results.json"
    assert (tmp_path / "assets" / "compare_results.json").read_bytes() == shipped.read_bytes()


def test_log_axes_leave_minor_ticks_unlabelled():
    """On a log axis of a decade or two matplotlib labels the minor ticks too, on top of each other (05's β sweep)."""
    unlabelled = {}
    for path in site.notebook_paths():
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code" and re.search(r"set_[xy]scale\(\"log\"", cell.source):
                unlabelled[f"{path.stem}: {cell.source[:40]}"] = "minor_formatter(plt.NullFormatter())" in cell.source
    assert unlabelled and all(unlabelled.values()), unlabelled


@pytest.fixture(scope="module")
def server(built):
    """The site served on 127.0.0.1 (a free port) while the module's tests run."""
    handler = partial(QuietHandler, directory=str(built[0]))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the browser's requests are checked, not printed
        pass


PAGE_CHECKS = """() => {
  const body = document.body.cloneNode(true);
  body.querySelectorAll('pre, code, script, style, mjx-container').forEach(e => e.remove());
  const link = selector => (document.querySelector(selector) || {getAttribute: () => null}).getAttribute('href');
  return {
    text: body.innerText,
    math: document.querySelectorAll('mjx-container').length,
    mathErrors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error')),
    brokenImages: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))
                       .map(i => i.src.slice(0, 80)),
    images: document.images.length,
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
    all: document.body.innerText,
    title: document.title,
    nav: Array.from(document.querySelectorAll('.site-header nav a')).map(a => ({
      href: a.getAttribute('href'), label: a.innerText, title: a.title, current: a.getAttribute('aria-current')})),
    prev: link('.site-pager a[rel=prev]'), next: link('.site-pager a[rel=next]'),
    checks: Array.from(document.querySelectorAll('.celltag_site-check .jp-OutputArea')).map(area => {
      const folded = area.querySelector('details');
      return {summary: folded && folded.querySelector('summary').innerText, open: folded && folded.open,
              labelFont: getComputedStyle(area, '::before').fontFamily};
    }),
    uiFont: getComputedStyle(document.querySelector('.site-header')).fontFamily,
    typedMarks: (document.body.textContent.match(/[\u2705\u274c]/gu) || []).length,
    marks: Array.from(document.querySelectorAll('svg.site-mark')).map(m => ({
      kind: m.getAttribute('aria-label'), color: getComputedStyle(m).color, width: m.getBoundingClientRect().width,
      shown: !m.closest('details:not([open])')})),
  };
}"""
# At each width: what is cut off without a way to scroll to it (in a cell, MathJax's own parts aside), output text
# that breaks inside words, how the header stays, and how wide the page and the body's content are (content that
# sticks out of the body by less than its margin leaves the page as wide as the screen, but not the body).
# Blocks in a cell that scroll but that Tab cannot reach (or a screen reader cannot name)
UNFOCUSABLE = """() => Array.from(document.querySelectorAll('.jp-Cell *'))
    .filter(e => !e.tagName.startsWith('MJX') || e.tagName === 'MJX-CONTAINER')
    .filter(e => { const s = getComputedStyle(e);
                   return (['auto', 'scroll'].includes(s.overflowX) && e.scrollWidth > e.clientWidth + 1)
                          || (['auto', 'scroll'].includes(s.overflowY) && e.scrollHeight > e.clientHeight + 1); })
    .filter(e => e.tabIndex < 0 || !e.getAttribute('aria-label'))
    .map(e => `${e.closest('.jp-Cell').id} ${e.tagName}.${e.className}`)"""
LAYOUT_CHECKS = """() => ({
  clipped: Array.from(document.querySelectorAll('.jp-Cell *'))
    .filter(e => !e.tagName.startsWith('MJX') && ['hidden', 'clip'].includes(getComputedStyle(e).overflowX)
                 && e.scrollWidth > e.clientWidth + 1)
    .map(e => `${e.closest('.jp-Cell').id} ${e.tagName}.${e.className}: ${e.scrollWidth} > ${e.clientWidth} px`),
  unfocusable: (UNFOCUSABLE)(),
  breakAll: Array.from(document.querySelectorAll('.jp-OutputArea-output pre'))
    .filter(e => getComputedStyle(e).wordBreak === 'break-all').length,
  header: getComputedStyle(document.querySelector('.site-header')).position,
  screen: window.innerWidth,
  page: document.documentElement.scrollWidth,
  body: [document.body.clientWidth, document.body.scrollWidth],
})""".replace("(UNFOCUSABLE)", f"({UNFOCUSABLE})")


def settled(page, seconds: float = 3) -> None:
    """Wait (at most ``seconds``) for the page to catch up with a new window size: until every block that scrolls
    takes keyboard focus; the check that follows reports any that still does not."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"() => ({UNFOCUSABLE})().length === 0", timeout=seconds * 1000)
    except PlaywrightTimeout:
        pass


def browse(base: str, pages: list[Path], shots: Path) -> dict[str, dict]:
    """Every page opened in headless Chromium: what its checks found, at a desktop's width and at a phone's
    (``"phone"``), with full-length screenshots of each."""
    from playwright.sync_api import sync_playwright

    found = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        offsite = []
        context.route(re.compile(r"^(?!http://127\.0\.0\.1:)"), lambda route: (offsite.append(route.request.url),
                                                                                route.abort()))
        for path in pages:
            page = context.new_page()
            errors = []
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on("response", lambda r, errors=errors: errors.append(f"{r.status} {r.url}") if r.status >= 400
                    else None)
            page.goto(base + path.name, wait_until="load")
            page.wait_for_function("document.documentElement.dataset.mathjax === 'done'", timeout=90_000)
            found[path.stem] = {**page.evaluate(PAGE_CHECKS), **page.evaluate(LAYOUT_CHECKS)}
            page.screenshot(path=str(shots / f"{path.stem}.jpg"), full_page=True, type="jpeg", quality=70)
            page.set_viewport_size(PHONE)
            settled(page)
            found[path.stem]["phone"] = page.evaluate(LAYOUT_CHECKS)
            page.screenshot(path=str(shots / f"{path.stem}-phone.jpg"), full_page=True, type="jpeg", quality=60)
            found[path.stem].update(errors=errors, offsite=list(offsite))
            page.close()
        browser.close()
    return found


@pytest.fixture(scope="module")
def browsed(built, server):
    if CHROMIUM is None:
        message = "no chromium on PATH: `make test` installs Debian's chromium as root (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    shots = ARTIFACTS / "screenshots"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # one browser at a time writes the screenshots: under `pytest -n 2` without `--dist loadscope` each worker builds
    # and browses the site, and two of them would empty the folder under each other
    with FileLock(ARTIFACTS / ".screenshots.lock"):
        shutil.rmtree(shots, ignore_errors=True)
        shots.mkdir(parents=True)
        return browse(server, built[1], shots)


def test_every_page_loads_offline_without_errors(browsed):
    problems = {name: page["errors"] + [f"requested off the site: {u}" for u in page["offsite"]]
                for name, page in browsed.items()}
    assert not any(problems.values()), {k: v[:5] for k, v in problems.items() if v}


def test_every_image_loads_and_every_figure_is_there(browsed):
    assert not {name: page["brokenImages"] for name, page in browsed.items() if page["brokenImages"]}
    for name in ("05_dpo_on_gpt2", "06_ppo_vs_dpo", "ppo_vs_dpo"):
        assert browsed[name]["images"] >= 1, f"{name}: no figure"


def test_math_is_typeset(browsed):
    raw = {name: RAW_MATH.findall(page["text"])[:5] for name, page in browsed.items()}
    assert not any(raw.values()), f"math left as TeX: { {k: v for k, v in raw.items() if v} }"
    assert not {name: page["mathErrors"] for name, page in browsed.items() if page["mathErrors"]}
    assert browsed["01_kl_objective"]["math"] >= 20 and browsed["03_deriving_dpo"]["math"] >= 20


def test_every_internal_link_resolves(browsed, server, built):
    broken = []
    for name, page in browsed.items():
        for href in page["links"]:
            url = urlparse(urljoin(f"{server}{name}.html", href))
            if url.scheme in {"http", "https"} and url.netloc != urlparse(server).netloc:
                continue  # a link out of the site (the papers, otter's docs): not this site's to serve
            target = Path(url.path).stem
            if not url.path.endswith(".html"):  # a download
                if not (built[0] / url.path.lstrip("/")).is_file():
                    broken.append(f"{name}: {href}")
            elif target not in browsed or (url.fragment and url.fragment not in browsed[target]["ids"]):
                broken.append(f"{name}: {href}")
    assert not broken, broken


def layouts_at(browsed: dict, width: str) -> dict:
    """Each page's layout measures at ``width`` ("desktop" or "phone")."""
    return {name: page["phone"] if width == "phone" else page for name, page in browsed.items()}


def test_code_and_outputs_scroll_instead_of_being_cut_off(browsed):
    """Nothing is cut off: wide code and outputs scroll inside their cell, and each block that scrolls takes keyboard
    focus (Tab reaches it, the arrow keys scroll it) and is named for a screen reader."""
    for width in ("desktop", "phone"):
        layouts = layouts_at(browsed, width)
        clipped = {name: layout["clipped"][:3] for name, layout in layouts.items() if layout["clipped"]}
        assert not clipped, f"{width}: cut off, no scrolling: {clipped}"
        assert not {name: layout["breakAll"] for name, layout in layouts.items() if layout["breakAll"]}, \
            f"{width}: output text breaks inside words"
        unfocusable = {name: layout["unfocusable"][:3] for name, layout in layouts.items() if layout["unfocusable"]}
        assert not unfocusable, f"{width}: scrolls, but a keyboard cannot reach it or it has no name: {unfocusable}"


def test_no_page_is_wider_than_the_screen(browsed):
    """No sideways scrolling of the page on a phone (or a desktop): only code and wide outputs scroll, inside their
    cells."""
    for width in ("desktop", "phone"):
        layouts = layouts_at(browsed, width)
        wider = {name: f"page {lay['page']} px, body content {lay['body'][1]} px in {lay['body'][0]} px"
                 for name, lay in layouts.items() if lay["page"] > lay["screen"] or lay["body"][1] > lay["body"][0]}
        assert not wider, f"{width} ({next(iter(layouts.values()))['screen']} px): {wider}"
    assert {page["phone"]["screen"] for page in browsed.values()} == {PHONE["width"]}


def test_markdown_tables_are_rendered(browsed):
    """A table whose row has a "|" inside math (``$\\pi(y|x)$``) is left as text by nbconvert's markdown parser."""
    raw = {name: [line for line in page["text"].splitlines() if line.startswith("| ") or "|---" in line][:3]
           for name, page in browsed.items()}
    assert not any(raw.values()), {k: v for k, v in raw.items() if v}


def test_navigation_names_and_marks_the_pages(browsed):
    notebooks = list(titles())
    for name, page in browsed.items():
        here = "grading.html" if name.startswith("grading") else f"{name}.html"
        assert [link["href"] for link in page["nav"] if link["current"] == "page"] == [here], name
        assert all(link["title"] for link in page["nav"]), f"{name}: a header link without its full name"
        assert {"grading.html", "ppo_vs_dpo.html", "beyond_the_laptop.html", "index.html"} <= {
            link["href"] for link in page["nav"]}
        assert page["phone"]["header"] not in {"sticky", "fixed"} and page["header"] == "sticky", name
    for at, name in enumerate(notebooks):
        page = browsed[name]
        assert page["title"] == f"{titles()[name]} · dpo-teach", page["title"]
        assert {link["href"]: link["title"] for link in page["nav"]}[f"{name}.html"] == titles()[name]
        assert page["prev"] == (f"{notebooks[at - 1]}.html" if at else None), name
        assert page["next"] == (f"{notebooks[at + 1]}.html" if at + 1 < len(notebooks) else None), name


def test_exercise_checks_are_folded_to_one_line(browsed):
    summary = re.compile(r"^\w+: (\d+ of \d+ tests? fails? on the unsolved stub|all \d+ tests pass)$")
    checks = [(name, check) for name, page in browsed.items() for check in page["checks"]]
    assert len(checks) >= 20, "every graded notebook has exercise checks"
    unfolded = [(name, check) for name, check in checks if not (check["summary"] and summary.match(check["summary"]))
                or check["open"]]
    assert not unfolded, unfolded[:3]
    font = re.compile(r"[\s'\"]")
    assert {font.sub("", check["labelFont"]) for _, check in checks} == {font.sub("", browsed["index"]["uiFont"])}


def test_pass_and_fail_marks_show_without_an_emoji_font(browsed):
    """No page types ✅/❌ (this machine, like many, has no emoji font); each is drawn, green or red, a letter wide."""
    assert not {name: page["typedMarks"] for name, page in browsed.items() if page["typedMarks"]}
    marks = {name: page["marks"] for name, page in browsed.items() if page["marks"]}
    assert {"00_start_here", "01_kl_objective"} <= set(marks), set(marks)  # 00's text on checks, 01's feedback
    colours = {(mark["kind"], mark["color"]) for page in marks.values() for mark in page}
    assert colours == {("passed", "rgb(26, 127, 55)"), ("failed", "rgb(207, 34, 46)")}, colours
    shown = [mark["width"] for page in marks.values() for mark in page if mark["shown"]]  # not folded away
    assert shown and min(shown) >= 8, shown


def test_no_solution_code_on_any_page(browsed):
    secrets = [site.plain(line) for line in site.secret_lines()]
    leaked = {name: [s for s in secrets if s in site.plain(page["all"])][:3] for name, page in browsed.items()}
    assert not any(leaked.values()), leaked
