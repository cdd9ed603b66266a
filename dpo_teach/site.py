"""The course as a static web site: every notebook executed once and rendered with its outputs, offline.

    python -m dpo_teach.site --out results/site          # full mode: the numbers a student sees (`make site`)
    DPO_TEACH_FAST=1 python -m dpo_teach.site ...          # fast mode: what CI builds; the pages say which

Pages: ``index.html`` (the course map and the README's quick start), one page per notebook (the student version,
exercises still stubs: its check cells show the feedback an unsolved exercise gets, the notebook goes on with the
package's reference answers), ``ppo_vs_dpo.html`` (the shipped comparison and its frontier) and one
``grading_NN_name.html`` per exercise set. Rendering is nbconvert's JupyterLab template with three changes
(``site_assets/page.html``, a Jinja template): no script from a CDN (math is typeset by the MathJax 3 copy that the
``django-static-mathjax`` wheel ships, copied into ``static/mathjax``), one shared stylesheet, and a header with
the navigation and the mode. Widgets are written as their static state (the outputs they showed, the sliders'
values); the test suite builds the site from its own notebook runs (tests/test_site.py), so nothing runs twice.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from dpo_teach.claims import MODE_ENV
from dpo_teach.grading import AUTOGRADER, MASTERS, NOTEBOOKS
from dpo_teach.grading.assign import solution_lines

ROOT = NOTEBOOKS.parent
ASSETS = Path(__file__).parent / "site_assets"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# The note a claim check prints when a run forces it down its failed path (claims.py), as the test suite's runs do.
FORCED_NOTE = re.compile(r"⚠ claim not reproduced on this machine \(forced: " + MODE_ENV + r"=[^)]*\): .*\n"
                         r"  why this can happen: .*\n  The notebook goes on; .*\n?")
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
        (workdir / "assets").symlink_to((path.parent / "assets").resolve(), target_is_directory=True)


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


# --- notebooks as pages ---------------------------------------------------------------------------------------------

def _widget_outputs(state: dict, model_id: str) -> list[dict]:
    """What widget ``model_id`` showed when the run ended: an Output widget's outputs, a control's value."""
    model = state.get(model_id, {})
    name, fields = model.get("model_name", ""), model.get("state", {})
    if name == "OutputModel":
        return list(fields.get("outputs", []))
    if "children" in fields:
        return [out for child in fields["children"] for out in _widget_outputs(state, child.removeprefix("IPY_MODEL_"))]
    if "value" in fields and name.endswith(("SliderModel", "DropdownModel", "CheckboxModel", "ToggleButtonsModel")):
        label, value = html.escape(fields.get("description", "")), fields["value"]
        if "_options_labels" in fields and isinstance(value, int):  # a dropdown's value is the chosen label's index
            value = fields["_options_labels"][value]
        value = html.escape(str(value))
        return [nbformat.v4.new_output("display_data", data={
            "text/html": f'<p class="site-widget">{label} <b>{value}</b> <span>(a control: change it when you run '
                         f"the notebook)</span></p>", "text/plain": f"{label} {value}"})]
    return []


def static_widgets(nb: nbformat.NotebookNode) -> None:
    """Replace every widget view by its static state, and drop the widget state (no widget script is loaded)."""
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            outputs += [nbformat.from_dict(o) for o in _widget_outputs(state, view["model_id"])] if view else [out]
        cell.outputs = outputs


def drop_forced_notes(nb: nbformat.NotebookNode) -> None:
    """Remove the notes of claim checks forced to take their failed path (the suite's runs force every check, to show
    that none stops a notebook; a claim that did not hold fails the suite instead), which a reader should not see."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out.text = FORCED_NOTE.sub("", out.text)
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream" or o.text]


def mark_checks(nb: nbformat.NotebookNode) -> None:
    """Tag the exercise check cells so that the page labels their output (the feedback an unsolved stub gets)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith("grader.check("):
            cell.metadata.setdefault("tags", []).append("site-check")


def exporter() -> HTMLExporter:
    return HTMLExporter(template_name="lab", extra_template_paths=[str(ASSETS)], template_file="page.html",
                        exclude_anchor_links=True)


def render(nb: nbformat.NotebookNode, title: str, nav: list[tuple[str, str]], banner: str) -> str:
    """One page: ``nav`` is the header's (href, label) links, ``banner`` the line saying how the page was made."""
    nb.metadata["title"] = title
    body, _ = exporter().from_notebook_node(nb, resources={"site": {"nav": nav, "banner": banner}})
    return body


# --- pages from the README and the manifests ------------------------------------------------------------------------

def readme_section(title: str) -> str:
    """The README's ``## title`` section, heading included."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return f"## {title}\n\n{body.strip()}"


def markdown_page(*sections: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(s) for s in sections])


def link_notebooks(markdown: str, names: list[str]) -> str:
    """`` `NN_name` `` in the README's course map -> a link to its page (and its exercise page, if any)."""
    for name in names:
        grading = f" ([exercises](grading_{name}.html))" if (AUTOGRADER / f"{name}.json").is_file() else ""
        markdown = markdown.replace(f"`{name}`", f"[{name}]({name}.html){grading}")
    return markdown


def landing(names: list[str]) -> nbformat.NotebookNode:
    intro = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ", 1)[0].replace("# dpo-teach", "# dpo-teach: "
                                                                                             "the course")
    pages = "\n".join(f"- [{name}]({name}.html)" for name in names)
    return markdown_page(intro, link_notebooks(readme_section("Course map"), names),
                         "## Pages\n\n" + pages + "\n- [PPO vs DPO: the shipped comparison](ppo_vs_dpo.html)",
                         readme_section("Quick start").split("\n### ", 1)[0])


def grading_page(name: str) -> nbformat.NotebookNode:
    manifest = json.loads((AUTOGRADER / f"{name}.json").read_text(encoding="utf-8"))
    rows = "\n".join(f"| `{q['name']}` | {q['points']} | {'by hand' if q['manual'] else 'automatically'} |"
                     for q in manifest["questions"])
    return markdown_page(
        f"# Exercises of [{name}]({name}.html)\n\n| question | points | graded |\n|---|---|---|\n{rows}",
        "## Checking your answer\n\nEach exercise is a function (or an answer) in a cell of the notebook, followed "
        "by a `grader.check(\"question\")` cell that runs the public tests and prints what failed. The pages of this "
        "site show those checks on the unsolved stubs, as a student sees them first; after each exercise the "
        "notebook goes on with the package's reference version, so every later cell runs.",
        readme_section("For instructors: grading"))


def frontier_figure(path: Path) -> None:
    """The reward–KL frontier of the shipped comparison (the README's and notebook 06's numbers) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from dpo_teach import frontier
    from dpo_teach.plots import save_figure

    save_figure(frontier.plot_frontier(frontier.load_results(NOTEBOOKS / "assets" / "compare_results.json")), path)


def results_page() -> nbformat.NotebookNode:
    return markdown_page(readme_section("PPO vs DPO (instructor demo)").replace(
        "\n\nMeasured", "\n\n![reward–KL frontier, fluency and sample efficiency](images/frontier.png)\n\nMeasured", 1))


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
    css = [(lab / "index.css").read_text(), (lab / "theme-light.css").read_text(), (ASSETS / "site.css").read_text()]
    (out / "static" / "site.css").write_text("\n".join(css), encoding="utf-8")


def page_text(path: Path) -> str:
    """What a reader of file ``path`` sees: for a page, its text without tags (code is split into highlighted spans)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return html.unescape(re.sub(r"<[^>]+>", "", text)) if path.suffix == ".html" else text


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


def provenance(mode: str) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    how = ("fast mode (DPO_TEACH_FAST=1: the CI build, shorter runs, same lessons)" if mode == "fast"
           else "full mode (the numbers a student sees running the notebooks)")
    return f"Executed in <b>{how}</b>, commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."


def build(executed: dict[str, nbformat.NotebookNode], out: Path, mode: str) -> list[Path]:
    """Write the site for the executed notebooks ``{name: notebook}`` into ``out`` (emptied first); returns pages."""
    names = sorted(executed)
    graded = [n for n in names if (AUTOGRADER / f"{n}.json").is_file()]
    nav = ([("index.html", "Home")] + [(f"{n}.html", n[:2]) for n in names] + [("ppo_vs_dpo.html", "PPO vs DPO")]
           + [(f"grading_{graded[0]}.html", "Grading")] * bool(graded))
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    copy_static(out)
    frontier_figure(out / "images" / "frontier.png")
    banner = provenance(mode)
    pages = {"index": (landing(names), "dpo-teach: the course"), "ppo_vs_dpo": (results_page(), "PPO vs DPO")}
    for name in names:
        nb = nbformat.from_dict(json.loads(json.dumps(executed[name])))  # a copy: the caller's stays as it ran
        static_widgets(nb)
        drop_forced_notes(nb)
        mark_checks(nb)
        pages[name] = (nb, name)
    pages.update({f"grading_{n}": (grading_page(n), f"Exercises of {n}") for n in graded})
    for stem, (nb, title) in pages.items():
        (out / f"{stem}.html").write_text(render(nb, title, nav, banner), encoding="utf-8")
    found = leaks(out)
    if found:
        shutil.rmtree(out)
        raise RuntimeError(f"the site would show exercise solutions, so it was deleted: {found[:5]}")
    return [out / f"{stem}.html" for stem in pages]


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
    pages = build(executed, args.out, mode)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(pages)} pages rendered in {time.perf_counter() - t:.0f} s; {args.out}: {size / 1e6:.1f} MB; "
          f"{time.perf_counter() - start:.0f} s in all. Open {args.out / 'index.html'}")


if __name__ == "__main__":
    main()
