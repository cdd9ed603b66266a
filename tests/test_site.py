"""The course site (dpo_teach/site.py), built from this suite's own notebook runs and read in a real browser.

The site is built from the executed copies that ``notebook_runs`` (conftest.py) keeps, so no notebook runs twice:
this module is one of the ``LAST`` work units, after the units that run the notebooks. Headless Chromium (Debian's
``chromium``, driven by Playwright; ``make test`` installs it as root) opens every page from 127.0.0.1 with every
other host blocked, and each page's full-length screenshot is written to ``results/site-test/`` for a person to look
at, with the build's time and size in ``build.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest

from dpo_teach import site
from dpo_teach.grading import MASTERS, NOTEBOOKS
from dpo_teach.grading.assign import solution_lines

ARTIFACTS = Path(os.environ.get("DPO_TEACH_SITE_ARTIFACTS", NOTEBOOKS.parent / "results" / "site-test"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
RAW_MATH = re.compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")


@pytest.fixture(scope="module")
def built(notebook_runs, tmp_path_factory):
    """``(site folder, pages)``: the site of the suite's fast-mode runs of every notebook."""
    runs = {path.stem: notebook_runs.get(path, fast=True) for path in site.notebook_paths()}
    stopped = {name: run["error"] for name, run in runs.items() if run["error"]}
    assert not stopped, f"notebooks that did not run to the end: {stopped}"
    out = tmp_path_factory.mktemp("site") / "site"
    start = time.perf_counter()
    pages = site.build({name: run["nb"] for name, run in runs.items()}, out, mode="fast")
    seconds = time.perf_counter() - start
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (ARTIFACTS / "build.json").write_text(json.dumps({
        "render_s": round(seconds, 1), "notebook_run_s": {n: round(r["seconds"], 1) for n, r in runs.items()},
        "bytes": size, "pages": len(pages)}, indent=1))
    return out, pages


def test_every_notebook_has_a_page_with_its_outputs(built):
    out, pages = built
    names = {p.stem for p in pages}
    assert {p.stem for p in site.notebook_paths()} <= names and {"index", "ppo_vs_dpo"} <= names
    for path in site.notebook_paths():
        page = (out / f"{path.stem}.html").read_text(encoding="utf-8")
        assert "Executed in <b>fast mode" in page, path.stem  # which mode produced the numbers
        assert "application/vnd.jupyter.widget" not in page, f"{path.stem}: a widget left without its static state"
        assert "(forced: DPO_TEACH_CLAIMS" not in page, f"{path.stem}: the suite's forced claim notes are shown"
    for name in ("01_kl_objective", "05_dpo_on_gpt2", "06_ppo_vs_dpo"):  # figures are embedded PNGs
        assert "data:image/png" in (out / f"{name}.html").read_text(encoding="utf-8"), f"{name}: no figure"


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
    (out / "planted.html").write_text(site.render(planted, "planted", [], ""), encoding="utf-8")
    try:
        assert site.page_text(out / "planted.html").count(line) == 2 and site.leaks(out)
    finally:
        (out / "planted.html").unlink()


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
  };
}"""


def browse(base: str, pages: list[Path], shots: Path) -> dict[str, dict]:
    """Every page opened in headless Chromium: what its checks found, with a full-length screenshot of each."""
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
            found[path.stem] = {**page.evaluate(PAGE_CHECKS), "errors": errors, "offsite": list(offsite)}
            page.screenshot(path=str(shots / f"{path.stem}.jpg"), full_page=True, type="jpeg", quality=70)
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


def test_every_internal_link_resolves(browsed, server):
    broken = []
    for name, page in browsed.items():
        for href in page["links"]:
            url = urlparse(urljoin(f"{server}{name}.html", href))
            if url.scheme in {"http", "https"} and url.netloc != urlparse(server).netloc:
                continue  # a link out of the site (the papers, otter's docs): not this site's to serve
            target = Path(url.path).stem
            if target not in browsed or (url.fragment and url.fragment not in browsed[target]["ids"]):
                broken.append(f"{name}: {href}")
    assert not broken, broken


def test_no_solution_code_on_any_page(browsed):
    secrets = [site.plain(line) for line in site.secret_lines()]
    leaked = {name: [s for s in secrets if s in site.plain(page["all"])][:3] for name, page in browsed.items()}
    assert not any(leaked.values()), leaked
