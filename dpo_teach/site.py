"""The course as a static web site: every notebook executed once and rendered with its outputs, offline.

    python -m dpo_teach.site --out results/site          # full mode: the numbers a student sees (`make site`)
    DPO_TEACH_FAST=1 python -m dpo_teach.site ...          # fast mode: shorter runs; the pages say which

Pages: ``index.html`` (the course map, the toy world and "Get the course": the student release as a zip in
``downloads/``, built by ``dpo_teach.grading.release``, which refuses to write one that holds a solution), one page per
notebook (the student version, exercises still stubs: its check cells show, folded, the feedback an unsolved exercise
gets, and the notebook goes on with the package's reference answers; dpo_teach/site_pages.py makes each executed
notebook into a page and keeps developers' text out of the README's sections), ``ppo_vs_dpo.html`` (the shipped
comparison and its frontier), ``beyond_the_laptop.html`` (TRL and the GPU script), one ``grading_NN_name.html`` per
exercise set and ``grading.html`` (every set, and how instructors grade); dpo_teach/site_readme.py writes the pages that
are not executed notebooks. Rendering is nbconvert's JupyterLab template with three changes (``site_assets/page.html``,
a Jinja template): no script from a CDN (math is typeset by the MathJax 3 copy that the ``django-static-mathjax`` wheel
ships, copied into ``static/mathjax``), one shared stylesheet, and a header and footer with the navigation and the mode.
The test suite builds the site from its own notebook runs (tests/test_site.py), so nothing runs twice."""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from dpo_teach import site_pages
from dpo_teach.grading import AUTOGRADER, MASTERS, NOTEBOOKS, ROOT, load_manifests
from dpo_teach.grading.assign import solution_lines
from dpo_teach.grading.release import release
from dpo_teach.site_readme import (
    DOWNLOADS,
    beyond_page,
    grading_index,
    grading_page,
    landing,
    readme_sections,
    results_page,
)
from dpo_teach.utils import atomic_dir, check_replaceable

WRITE = {"ppo_vs_dpo": results_page, "beyond_the_laptop": beyond_page}  # each of site_pages.WRITTEN_PAGES
ASSETS = Path(__file__).parent / "site_assets"
# The parts of MathJax 3 that the pages load (TeX in, CommonHTML out, its web fonts, the TeX packages it loads on
# demand), from the copy that the django-static-mathjax wheel ships (no Django needed: only its files are read).
MATHJAX_PARTS = ["tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions"]


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def current_mode() -> str:
    """The notebooks' own switch: fast mode when DPO_TEACH_FAST=1, full mode otherwise."""
    return "fast" if os.environ.get("DPO_TEACH_FAST", "0") == "1" else "full"


def link_assets(path: Path, workdir: Path) -> None:
    """The folder ``assets/`` beside notebook ``path`` linked into ``workdir``, if the notebook reads it (06 opens the
    shipped comparison there)."""
    reads = any('"assets"' in cell.source for cell in nbformat.read(path, as_version=4).cells)
    if reads and not (workdir / "assets").exists():
        try:
            (workdir / "assets").symlink_to((path.parent / "assets").resolve(), target_is_directory=True)
        except OSError:  # Windows without Developer Mode may refuse links: a copy reads the same
            shutil.copytree(path.parent / "assets", workdir / "assets")


def execute(path: Path, workdir: Path, timeout: int = 1800) -> nbformat.NotebookNode:
    """``path`` run top to bottom in a fresh kernel in ``workdir`` (in this process's mode); raises on a cell error."""
    from dpo_teach.headless import notebook_client

    nb = nbformat.read(path, as_version=4)
    workdir.mkdir(parents=True, exist_ok=True)
    link_assets(path, workdir)
    client = notebook_client(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()
    nbformat.write(nb, workdir / path.name)
    return nb


# --- rendering -------------------------------------------------------------------------------------------------------

def exporter() -> HTMLExporter:
    return HTMLExporter(template_name="lab", extra_template_paths=[str(ASSETS)], template_file="page.html",
                        exclude_anchor_links=True)


def render(nb: nbformat.NotebookNode, title: str, **site) -> str:
    """One page titled ``title``; ``site`` fills the header and footer of ``site_assets/page.html``: ``nav`` (the
    links of :func:`site_pages.header_links`), ``banner`` (the mode), ``download`` (the notebook's file), ``pager``
    (:func:`site_pages.neighbours`) and ``made`` (commit and time). otter's ✅/❌ are drawn
    (:func:`site_pages.draw_marks`) and printed tables keep their columns (:func:`site_pages.keep_columns`)."""
    nb.metadata["title"] = title
    body, _ = exporter().from_notebook_node(nb, resources={"site": site})
    return site_pages.keep_columns(site_pages.draw_marks(body))


# --- the comparison's figure ----------------------------------------------------------------------------------------

def frontier_figure(path: Path) -> None:
    """The reward–KL frontier of the shipped comparison (the README's and notebook 06's numbers) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from dpo_teach import frontier
    from dpo_teach.plots import course_figures, save_figure

    with course_figures():  # as notebook 06 draws it, whatever this process's settings
        save_figure(frontier.plot_frontier(frontier.load_results(NOTEBOOKS / "assets" / "compare_results.json")), path)


# --- the whole site -------------------------------------------------------------------------------------------------

def copy_static(out: Path) -> None:
    """MathJax's files and one stylesheet (JupyterLab's light theme + the site's rules) into ``out/static``."""
    import mathjax as django_static_mathjax

    mathjax = Path(django_static_mathjax.__file__).parent / "static" / "mathjax" / "es5"
    for part in MATHJAX_PARTS:
        src, dst = mathjax / part, out / "static" / "mathjax" / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy(src, dst)
    lab = next(Path(p) / "static" for p in exporter().template_paths if (Path(p) / "static" / "index.css").is_file())
    css = [(folder / name).read_text(encoding="utf-8")
           for folder, name in ((lab, "index.css"), (lab, "theme-light.css"), (ASSETS, "site.css"))]
    (out / "static" / "site.css").write_text("\n".join(css), encoding="utf-8")


def page_text(path: Path) -> str:
    """What a reader of file ``path`` sees: for a page, its :func:`visible_text`."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return visible_text(text) if path.suffix == ".html" else text


def visible_text(markup: str) -> str:
    """HTML without its tags, entities decoded (highlighted code is split into spans: this joins it again)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def plain(text: str) -> str:
    """``text`` without markdown's emphasis and code marks, as a page shows it (``**a** `b` `` -> ``a b``)."""
    return text.replace("*", "").replace("`", "")


def public_lines(lines: set[str]) -> set[str]:
    """Those of ``lines`` that students get anyway: in a cell or a public test of a student notebook (a hidden test
    may share a set-up line with a public one, an answer a phrase with the text)."""
    given = []
    for path in notebook_paths():
        nb = nbformat.read(path, as_version=4)
        tests = nb.metadata.get("otter", {}).get("tests", {}).values()
        given += [cell.source for cell in nb.cells]
        given += [case["code"] for test in tests for suite in test["suites"] for case in suite["cases"]]
    text = plain("\n".join(given))
    return {line for line in lines if plain(line) in text}


def secret_lines() -> set[str]:
    """Every line of a master's solutions, hidden tests and rubrics (``solution_lines``) that no student notebook
    shows already."""
    secret = {line for master in sorted(MASTERS.glob("*.ipynb")) for line in solution_lines(master)}
    return secret - public_lines(secret)


def leaks(out: Path) -> list[str]:
    """``"file: line"`` for every secret line (:func:`secret_lines`) found in a text file of the site."""
    secret = secret_lines()
    texts = {p: plain(page_text(p)) for p in sorted(out.rglob("*")) if p.suffix in {".html", ".css", ".js", ".json"}}
    return [f"{p.relative_to(out)}: {line[:80]}" for p, text in texts.items() for line in sorted(secret)
            if plain(line) in text]


def mode_note(mode: str) -> str:
    """The line under each page's header: which mode produced the numbers on it."""
    return ("Executed in <b>fast mode</b>: smaller data sets and shorter training runs than the notebooks' default, "
            "so numbers differ from a full run, some by much (05's KL); same lessons." if mode == "fast" else
            "Executed in <b>full mode</b>: the notebooks' default runs, the numbers a run of them gives (on another "
            "machine a few may land a little elsewhere, and the notebook says so).")


def provenance() -> str:
    """The line at the foot of each page: from which commit, when."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"Built from commit {commit} on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."


def write_downloads(out: Path) -> int:
    """The student release (``dpo_teach.grading.release``, which writes nothing when a solution or hidden test would
    be in it) as ``out/downloads/dpo-teach.zip``, its notebooks one by one beside it and the licences
    (``LICENSE.txt``); returns the zip's bytes."""
    folder = out / DOWNLOADS
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        release(Path(tmp) / "dpo-teach")
        archive = Path(shutil.make_archive(str(folder / "dpo-teach"), "zip", root_dir=tmp, base_dir="dpo-teach"))
        for notebook in sorted((Path(tmp) / "dpo-teach" / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            shutil.copy(notebook, folder)
    shutil.copy(ROOT / "LICENSE", folder / "LICENSE.txt")  # each page's foot links it
    return archive.stat().st_size


def all_pages(executed: dict[str, nbformat.NotebookNode], caches: dict[str, str], titles: dict[str, str],
              graded: dict[str, dict], zip_bytes: int) -> dict:
    """``{stem: (notebook, title)}`` for every page of the site: the index, the comparison, TRL beyond the laptop,
    the notebooks (``caches``: the π_ref cache folder each one's run used, if not this process's) and the exercise
    pages (``graded``: :func:`graded_questions`). The README is read here, once."""
    readme = readme_sections()
    pages = {"index": (landing(readme, titles, graded, zip_bytes), "dpo-teach: the course"),
             **{stem: (WRITE[stem](readme), title) for stem, _, title in site_pages.WRITTEN_PAGES}}
    pages |= {name: (site_pages.prepare(executed[name], [caches[name]] if name in caches else []), title)
              for name, title in titles.items()}
    pages |= {f"grading_{name}": (grading_page(name, titles[name], questions), f"Exercises of {titles[name]}")
              for name, questions in graded.items()}
    if graded:
        pages["grading"] = (grading_index(readme, titles, graded), "Exercises and grading")
    return pages


def graded_questions(names: list[str]) -> dict[str, dict]:
    """``{name: {question: {"points", "manual"}}}`` for those of the notebooks ``names`` that are graded, read once
    per build by the grader's own loader (``grading.load_manifests``: the manifests and bundles it grades with)."""
    manifests = load_manifests(AUTOGRADER)
    return {name: manifests[name]["questions"] for name in names if name in manifests}


def build(executed: dict[str, nbformat.NotebookNode], out: Path, mode: str,
          caches: dict[str, str] | None = None) -> list[Path]:
    """Write the site for the executed notebooks ``{name: notebook}`` into ``out``; returns pages. ``out`` is replaced
    as a whole when the site is finished (an earlier site stays until then, and where the build fails); a folder that
    holds anything but a site's files is refused (:class:`FileExistsError`). ``caches``: ``{name: the π_ref cache
    folder its run recorded}``, for runs made in another process with another ``$DPO_TEACH_CACHE`` (a test
    worker's); a run of this process used this process's cache."""
    titles = {name: site_pages.first_heading(executed[name], name) for name in sorted(executed)}
    check_replaceable(out, _site_files(out), "the site build")
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        copy_static(tmp)
        frontier_figure(tmp / "images" / "frontier.png")
        pages = all_pages(executed, caches or {}, titles, graded_questions(list(titles)), write_downloads(tmp))
        common = {"banner": mode_note(mode), "made": provenance()}
        for stem, (nb, title) in pages.items():
            download = f"{DOWNLOADS}/{stem}.ipynb"
            page = render(nb, title if stem == "index" else f"{title} · dpo-teach", **common,
                          nav=site_pages.header_links(titles, stem, "grading" in pages),
                          download=download if stem in titles and (tmp / download).is_file() else None,
                          pager=site_pages.neighbours(titles, stem) if stem in titles else None)
            (tmp / f"{stem}.html").write_text(page, encoding="utf-8")
        found = leaks(tmp)
        if found:  # raised inside the block: nothing of this build is kept, the earlier site stays
            raise RuntimeError(f"the site would show exercise solutions, so it was not written: {found[:5]}")
    return [out / f"{stem}.html" for stem in pages]


def _site_files(out: Path) -> set[str]:
    """What a site build writes into its folder, and may therefore replace: its pages and its three folders."""
    pages = {p.name for p in out.glob("*.html")} if out.is_dir() else set()
    return {"images", "static", DOWNLOADS, *pages}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "site", help="where the site goes")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the notebooks run and their executed copies stay (default: OUT-executed/MODE)")
    parser.add_argument("--frontier", type=Path, help="only draw the shipped comparison's frontier to this PNG")
    args = parser.parse_args(argv)
    if args.frontier:
        return frontier_figure(args.frontier)
    mode = current_mode()
    try:  # before the notebooks' minutes
        check_replaceable(args.out, _site_files(args.out), "the site build")
    except FileExistsError as e:
        sys.exit(f"make site: error: --out {e}")
    workdir = args.workdir or args.out.with_name(args.out.name + "-executed") / mode
    from dpo_teach.world import WorldConfig, load_reference

    os.environ.pop("MPLBACKEND", None)  # the kernels draw inline: with MPLBACKEND=Agg the pages would have no figures
    start = time.perf_counter()
    load_reference(WorldConfig(preset="tiny"), verbose=True)  # π_ref cached before the first kernel asks for it
    executed = {}
    for path in notebook_paths():
        t = time.perf_counter()
        executed[path.stem] = execute(path, workdir)
        print(f"{path.stem}: executed in {time.perf_counter() - t:.0f} s ({mode} mode)", flush=True)
    t = time.perf_counter()
    try:
        pages = build(executed, args.out, mode)  # the kernels inherited this process's cache: machine_paths knows it
    except FileExistsError as e:  # found after the notebooks ran too: the check above makes that rare
        sys.exit(f"make site: error: --out {e}")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(pages)} pages rendered in {time.perf_counter() - t:.0f} s; {args.out}: {size / 1e6:.1f} MB; "
          f"{time.perf_counter() - start:.0f} s in all. Open {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
