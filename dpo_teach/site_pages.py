"""An executed notebook made into a page of the course site (dpo_teach/site.py), and the links between the pages.

A notebook's outputs speak to the person who ran it, on their machine; a page of the site is read by someone else.
So before a notebook is rendered: widgets become what they showed (:func:`static_widgets`), the suite's forced
claim notes go (:func:`drop_forced_notes`), the build machine's folders become the names a reader would have
(:func:`clean_outputs`: the π_ref cache that the run recorded, the virtual environment, temporary folders, the
kernel's cell files, the doctest frames of exercise feedback), notebook 00's report on "this machine" says whose machine
that was (:func:`note_build_machine`), and each exercise check's feedback folds into one line (:func:`fold_checks`).
On every rendered page otter's ✅/❌ marks are drawn, not typed (:func:`draw_marks`: no emoji font needed), and printed
tables keep their columns (:func:`keep_columns`: they scroll sideways instead of wrapping on a phone). The
README's sections that the site shows leave out what only the course's developers need (:func:`for_readers`).
"""

from __future__ import annotations

import html
import json
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

import nbformat

from dpo_teach.claims import MODE_ENV
from dpo_teach.grading import NOTEBOOKS

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Widget models shown as "description chosen-value" (ipywidgets 8 saves a selection's `index` into `_options_labels`,
# a slider's or a checkbox's `value`).
CONTROLS = ("SliderModel", "DropdownModel", "CheckboxModel", "ToggleButtonsModel", "ToggleButtonModel",
            "RadioButtonsModel", "SelectModel")
# The note a claim check prints when a run forces it down its failed path (claims.py), as the test suite's runs do.
FORCED_NOTE = re.compile(r"⚠ claim not reproduced on this machine \(forced: " + MODE_ENV + r"=[^)]*\): .*\n"
                         r"  why this can happen: .*\n  The notebook goes on; .*\n?")
# A frame of doctest's own code in otter's feedback, with its source and caret lines (indented deeper than it).
DOCTEST_FRAME = re.compile(r'^( *)File "[^"\n]*doctest\.py", line \d+, in \w+\n(?:\1 +.*\n)*', re.MULTILINE)
CHECK = re.compile(r'grader\.check\("(\w+)"\)')
# Cells that report on the machine they ran on (notebook 00's environment check and set-up report).
MACHINE_CELL = re.compile(r"setup_report\(|sys\.executable")
MACHINE_NOTE = ("These lines describe the machine that built this site (its Python, packages, folders and speed); "
                "run the notebook to see yours.")
# Words about how the course is made, in two lists. FOR_DEVELOPERS: what only its developers need (CI, the test suite
# and its files, DPO_TEACH_STRICT, the issues and source card it was built from); no page shows them. FOR_INSTRUCTORS:
# how a course is assigned (the masters, the student versions), which a section marked for instructors may say and a
# student's page may not. The README's sections that the site shows leave out each sentence, parenthesis, table row or
# code line that names them (for_readers), and no student notebook shows either (tests/test_site.py,
# tests/test_notebooks_00_04.py). NOT_FOR_STUDENTS: both.
FOR_DEVELOPERS = re.compile(r"\bCI\b|test suite|make test\b|pytest|\btests/|DPO_TEACH_STRICT|source card|"
                            r"acceptance|\bissues? \d|completed by us", re.IGNORECASE)
FOR_INSTRUCTORS = re.compile(r"\bmasters?\b|student (?:notebook|version)", re.IGNORECASE)
NOT_FOR_STUDENTS = re.compile(f"{FOR_DEVELOPERS.pattern}|{FOR_INSTRUCTORS.pattern}", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[.!?])(?<!e\.g\.)(?<!i\.e\.)\s+(?=[A-Z*`\[(])")  # not after "e.g."
PARENTHESIS = re.compile(r" ?\([^()]*\)")
MARKUP = {"text/html", "text/markdown"}  # output kinds in which "<" starts a tag
PATH_CHAR = r"[^\s'\"<>|`)&]"  # a character of a printed path (not "&": in HTML a path ends at an entity, &quot;)
NAME_CHAR = r"[^\s'\"<>|`)&/]"  # a character of one of its folders' names
# where a printed path ends: only punctuation (the end of a sentence, a list's comma) follows, then no more path
PATH_END = rf"[.,;:!?]*(?!{PATH_CHAR})"
DEFAULT_CACHE = "~/.cache/dpo-teach"  # where a student's π_ref is cached (world.cache_dir without $DPO_TEACH_CACHE)


# --- widgets --------------------------------------------------------------------------------------------------------

def _control_value(fields: dict) -> str:
    """What a control shows as chosen: the label at ``index`` for a selection, else its ``value``."""
    if "index" in fields and "_options_labels" in fields:
        index, labels = fields["index"], fields["_options_labels"]
        chosen = [index] if isinstance(index, int) else list(index or [])
        return ", ".join(str(labels[i]) for i in chosen) or "(none)"
    return str(fields.get("value", ""))


def _widget_outputs(state: dict, model_id: str) -> list[dict]:
    """What widget ``model_id`` showed when the run ended: an Output widget's outputs, a control's chosen value."""
    model = state.get(model_id, {})
    name, fields = model.get("model_name", ""), model.get("state", {})
    if name == "OutputModel":
        return list(fields.get("outputs", []))
    if "children" in fields:
        return [out for child in fields["children"] for out in _widget_outputs(state, child.removeprefix("IPY_MODEL_"))]
    if name.endswith(CONTROLS) and ("value" in fields or "index" in fields):
        label, value = html.escape(fields.get("description", "")), html.escape(_control_value(fields))
        return [nbformat.v4.new_output("display_data", data={
            "text/html": f'<p class="site-widget">{label} <b>{value}</b> <span>(a control: change it when you run '
                         f"the notebook)</span></p>", "text/plain": f"{label} {value}"})]
    return []


def static_widgets(nb: nbformat.NotebookNode) -> None:
    """Replace every widget view by its static state, and drop the widget state (no widget script is loaded)."""
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in code_cells(nb):
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(WIDGET_VIEW)
            outputs += [nbformat.from_dict(o) for o in _widget_outputs(state, view["model_id"])] if view else [out]
        cell.outputs = outputs


# --- outputs a reader should see ------------------------------------------------------------------------------------

def code_cells(nb: nbformat.NotebookNode) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def drop_forced_notes(nb: nbformat.NotebookNode) -> None:
    """Remove the notes of claim checks forced to take their failed path (the suite's runs force every check, to show
    that none stops a notebook; a claim that did not hold fails the suite instead), which a reader should not see."""
    for cell in code_cells(nb):
        for out in cell.outputs:
            if out.get("output_type") == "stream":
                out.text = FORCED_NOTE.sub("", out.text)
        cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream" or o.text]


def _literal(path: Path | str) -> str:
    """A regex for the folder ``path`` as printed, alone or followed by more of a path (not by more of its name)."""
    return re.escape(str(path).rstrip("/")) + rf"(?=/|{PATH_END})"


def machine_paths(caches: Iterable[Path | str] = ()) -> list[tuple[re.Pattern, str]]:
    """``(pattern, what a reader sees instead)`` for the folders of the machine and the run that built the site, in
    the order they apply (a kernel's cell file and a cache entry can lie in a temporary folder, the venv in the
    repository): a kernel's cell file -> ``<cell>``, a π_ref cache entry anywhere, this process's cache or one of
    ``caches`` (the π_ref caches that the notebook runs recorded: a run in another process, such as a test worker's,
    had its own ``$DPO_TEACH_CACHE``) -> the default cache, the venv -> ``.venv``, the repository -> ``dpo-teach``, a
    temporary folder -> ``<temporary folder>``. A path keeps the punctuation that follows it (``in /tmp/x.``)."""
    from dpo_teach.world import cache_dir

    recorded = [Path(cache) for cache in caches]
    every_cache = {cache_dir(), cache_dir().resolve(), *recorded, *(cache.resolve() for cache in recorded)}
    folders = [(cache, DEFAULT_CACHE) for cache in sorted(map(str, every_cache), key=len, reverse=True)]
    folders += [(sys.prefix, ".venv"), (sys.base_prefix, "python"), (NOTEBOOKS.parent, "dpo-teach"), (Path.home(), "~")]
    rules = [(rf"{PATH_CHAR}*/ipykernel_\d+/\d+\.py", "<cell>"),
             (rf"{PATH_CHAR}*/(?=reference-\w+-\w+)", f"{DEFAULT_CACHE}/")]
    rules += [(_literal(folder), text) for folder, text in folders if str(folder).strip("/.")]
    # a temporary folder (not /var/tmp), however deep (a test run's is /tmp/pytest-of-USER/pytest-N/...), up to a file's
    # name, which stays, also for a file directly in it (/tmp/x.json -> <temporary folder>/x.json); a folder with a dot
    # in its name (mktemp's /tmp/tmp.k3JdS9) is a folder, not a file's name. The deepest temporary folder first.
    rules += [(r"(?<![\w.-])" + re.escape(temp) + rf"(?:/{NAME_CHAR}+?)*?(?=/{NAME_CHAR}+\.\w+\b(?!/)|/?{PATH_END})",
               "<temporary folder>") for temp in sorted({tempfile.gettempdir(), "/tmp"}, key=len, reverse=True)]
    return [(re.compile(pattern), text) for pattern, text in rules]


def clean_text(text: str, markup: bool = False, rules: list[tuple[re.Pattern, str]] | None = None) -> str:
    """``text`` (an output's text, or its HTML when ``markup``) without the build machine's folders
    (:func:`machine_paths`, or ``rules`` already made from it) and without doctest's own frames in a traceback (the
    failing example and its error stay)."""
    for pattern, neutral in rules or machine_paths():
        text = pattern.sub(html.escape(neutral) if markup else neutral, text)
    return DOCTEST_FRAME.sub("", text)


def clean_outputs(nb: nbformat.NotebookNode, caches: Iterable[Path | str] = ()) -> None:
    """:func:`clean_text` on every output: streams, tracebacks and every text form of a result. ``caches``: the π_ref
    cache folders the run of ``nb`` recorded (:func:`machine_paths`)."""
    rules = machine_paths(caches)  # once per notebook, not once per output line
    for cell in code_cells(nb):
        for out in cell.outputs:
            if "text" in out:
                out.text = clean_text(out.text, rules=rules)
            if "traceback" in out:
                out.traceback = [clean_text(line, rules=rules) for line in out.traceback]
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/") and isinstance(value, str):
                    out.data[kind] = clean_text(value, markup=kind in MARKUP, rules=rules)


def note_build_machine(nb: nbformat.NotebookNode) -> None:
    """Put :data:`MACHINE_NOTE` before the output of each cell that reports on the machine it ran on."""
    note = nbformat.v4.new_output("display_data", data={
        "text/html": f'<p class="site-note">{html.escape(MACHINE_NOTE)}</p>', "text/plain": MACHINE_NOTE})
    for cell in code_cells(nb):
        if cell.outputs and MACHINE_CELL.search(cell.source):
            cell.outputs.insert(0, nbformat.from_dict(note))


# a plot's own words in the code that drew it: title="…", ax.set_xlabel("…"), plt.ylabel(f"…"), suptitle("…")
_LABEL = re.compile(r"""(?<!\w)(?:set_)?(title|suptitle|xlabel|ylabel)\s*(?:\(|=)\s*f?(["'])(.+?)\2""")
_DEF = re.compile(r"^def (\w+)\(", re.MULTILINE)
_CALL = re.compile(r"(?<![\w.])(?:\w+\.)*(\w+)\(")
_GREEK = {"beta": "β", "pi": "π", "theta": "θ", "tau": "τ", "sigma": "σ", "varepsilon": "ε", "epsilon": "ε",
          "lambda": "λ", "phi": "φ", "star": "*"}


def _spoken(text: str) -> str:
    """Markdown or TeX as a screen reader should say it: no $, `, * or braces; \\beta as β; \\text{ref} as ref."""
    text = re.sub(r"\\(?:text|mathrm|operatorname)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\([A-Za-z]+)", lambda m: _GREEK.get(m[1], m[1]), text)
    return re.sub(r"[$`*{}]", "", text).strip()


def _labels(source: str) -> list[tuple[str, str]]:
    """``(kind, words)`` of every title and axis label that ``source`` sets (an f-string's fields as "…")."""
    return [(kind, _spoken(re.sub(r"\{[^{}]*\}", "…", text))) for kind, _, text in _LABEL.findall(source)]


def package_figures() -> dict[str, str]:
    """``{name: what it draws}`` for the package's figure functions (``plots``, ``frontier``): the first sentence of
    each docstring, for a figure whose titles and axes are set inside the package, not in the notebook's cell."""
    from dpo_teach import frontier, plots

    said = {}
    for module in (plots, frontier):
        for name, function in vars(module).items():
            if name.startswith(("plot_", "draw_")) and callable(function) and function.__doc__:
                text = " ".join(re.sub(r":\w+:`([^`]*)`", r"\1", function.__doc__).split())  # roles, line breaks
                sentence = re.split(r"(?<=\.)\s|;\s", text, maxsplit=1)[0].rstrip(".")
                said[name] = _spoken(sentence.replace("``", ""))
    return said


_TASK = re.compile(r"(Exercise|Question)\b")  # headings of the tasks in a section, not sections themselves


def describe_figures(nb: nbformat.NotebookNode) -> None:
    """Give every figure an alternative text for screen readers (nbconvert's default is "No description has been
    provided for this image"): the section it is in, the titles and axis labels that the code drawing it sets (in
    its cell, or in a function of the notebook's that the cell calls), and what a package function it calls draws
    (:func:`package_figures`). site_assets/page.html writes it into the image's ``alt``."""
    cells = code_cells(nb)
    defined = {name: _labels(cell.source) for cell in cells for name in _DEF.findall(cell.source)}
    drawers = package_figures()
    section = ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            headings = [text for line in cell.source.splitlines() if line.startswith("#")  # an exercise's or a
                        if not _TASK.match(text := line.lstrip("#").strip())]  # question's heading is no section
            section = _spoken(headings[-1]) if headings else section
            continue
        source = cell.get("source", "")
        called = dict.fromkeys(_CALL.findall(source))
        found = _labels(source) + [label for name in called if name in defined and name not in _DEF.findall(source)
                                   for label in defined[name]]
        words = {kind: [text for k, text in found if k == kind] for kind in ("title", "suptitle", "xlabel", "ylabel")}
        said = [f"drawing {drawers[name]}" for name in called if name in drawers]
        titles = list(dict.fromkeys(words["suptitle"] + words["title"]))
        said += [f"titled {'; '.join(titles)}"] if titles else []
        axes = [f"{'x' if kind == 'xlabel' else 'y'}: {', '.join(dict.fromkeys(words[kind]))}"
                for kind in ("xlabel", "ylabel") if words[kind]]
        said += [f"axes {'; '.join(axes)}"] if axes else []
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}):
                where = f"in the section “{section}”" if section else "drawn by the code above"
                alt = f"Figure {where}" + (f", {', '.join(said)}" if said else "")
                out.setdefault("metadata", {}).setdefault("image/png", {})["alt"] = alt


def check_summary(question: str, feedback: str) -> str:
    """One line for otter's feedback on ``question``: how many of its public tests fail (on the unsolved stub)."""
    failed, passed = feedback.count("❌"), feedback.count("✅")
    total = failed + passed
    if not total:
        return f"{question}: the check's feedback"
    if not failed:
        return f"{question}: all {total} tests pass"
    return f"{question}: {failed} of {total} test{'s' * (total > 1)} fail{'s' * (total == 1)} on the unsolved stub"


def fold_checks(nb: nbformat.NotebookNode) -> None:
    """Tag each exercise check cell (the page labels its output: the feedback an unsolved stub gets) and fold that
    feedback into a ``<details>`` whose summary is :func:`check_summary`: the lessons stay readable between checks.
    The feedback is shown as the text otter prints (its HTML form leaves doctest's ``<module>`` unescaped)."""
    for cell in code_cells(nb):
        question = CHECK.match(cell.source)
        if not question:
            continue
        cell.metadata.setdefault("tags", []).append("site-check")
        for out in cell.outputs:
            feedback = out.get("data", {}).get("text/plain")
            if feedback:
                summary = html.escape(check_summary(question.group(1), feedback))
                out.data = {"text/plain": feedback, "text/html": f'<details class="site-check"><summary>{summary}'
                            f"</summary><pre>{html.escape(feedback)}</pre></details>"}


def prepare(nb: nbformat.NotebookNode, caches: Iterable[Path | str] = ()) -> nbformat.NotebookNode:
    """A copy of the executed notebook ``nb`` made ready to render (the caller's stays as it ran); ``caches``: the
    π_ref cache folders its run recorded (:func:`clean_outputs`)."""
    page = nbformat.from_dict(json.loads(json.dumps(nb)))
    static_widgets(page)
    drop_forced_notes(page)
    clean_outputs(page, caches)
    note_build_machine(page)
    fold_checks(page)
    describe_figures(page)
    link_readme_sections(page)
    return page


# otter's marks, drawn (an emoji font, which many machines lack, would be needed to show the characters), with their
# meaning for a screen reader; site.css colours them.
MARKS = {mark: f'<svg class="site-mark site-{kind}" role="img" aria-label="{kind}" viewBox="0 0 16 16" width="1em" '
               f'height="1em"><path d="{path}" fill="none" stroke="currentColor" stroke-width="2.4" '
               'stroke-linecap="round" stroke-linejoin="round"/></svg>'
         for mark, kind, path in (("✅", "passed", "M2.5 8.5 6.5 12.5 13.5 3.5"),  # a tick
                                  ("❌", "failed", "M3.5 3.5l9 9m0-9-9 9"))}  # a cross


def draw_marks(page: str) -> str:
    """The rendered ``page`` (HTML) with each ✅/❌ in the text of its body drawn as an inline SVG (:data:`MARKS`);
    tags, their attributes, scripts, styles and the head are left as they are."""
    body = max(page.find("<body"), 0)  # none: all of it is body
    kept = r"(<script\b.*?</script>|<style\b.*?</style>|<[^>]*>)"
    return page[:body] + re.sub(kept + "|[✅❌]", lambda m: m[1] or MARKS[m[0]], page[body:], flags=re.DOTALL)


# a printed output whose lines line up in columns: at least two lines with a gap of two spaces or more inside them
_COLUMNS = re.compile(r"^.*\S {2,}\S.*$", re.MULTILINE)
_PRINTED = re.compile(r'(<div class="jp-RenderedText jp-OutputArea-output)("[^>]*>\s*<pre>)(.*?)(</pre>)', re.DOTALL)


def keep_columns(page: str) -> str:
    """The rendered ``page`` (HTML) with each printed output that lines up in columns (a table printed with padded
    fields) marked ``site-columns``: site.css keeps its lines whole, so the output scrolls sideways where it is wider
    than the screen, instead of wrapping each row into pieces that no longer line up. Other printed text wraps."""

    def mark(m: re.Match) -> str:
        text = html.unescape(re.sub(r"<[^>]+>", "", m[3]))
        columns = len(_COLUMNS.findall(text)) >= 2
        return f"{m[1]}{' site-columns' if columns else ''}{m[2]}{m[3]}{m[4]}"

    return _PRINTED.sub(mark, page)


# --- the README's text for readers ---------------------------------------------------------------------------------

def _units(markdown: str) -> list[tuple[bool, str]]:
    """``markdown`` as ``(is_prose, text)``: a paragraph or a bullet joined into one line (prose), every other line
    (code, table row, heading, blank) as it is."""
    units, fenced = [], False
    for line in markdown.split("\n"):
        fenced ^= line.startswith("```")
        prose = not fenced and bool(line.strip()) and not line.startswith(("```", "|", "#"))
        if prose and units and units[-1][0] and not line.startswith("- "):
            units[-1] = (True, f"{units[-1][1]} {line.strip()}")
        else:
            units.append((prose, line))
    return units


def _sentences_for_readers(prose: str, hide: re.Pattern) -> str:
    """``prose`` without the parentheses and sentences that match ``hide``."""
    bullet = "- " if prose.startswith("- ") else ""
    prose = PARENTHESIS.sub(lambda m: "" if hide.search(m[0]) else m[0], prose.removeprefix(bullet))
    kept = " ".join(s for s in SENTENCE_END.split(prose) if not hide.search(s))
    return bullet + kept if kept else ""


def for_readers(markdown: str, hide: re.Pattern = NOT_FOR_STUDENTS) -> str:
    """``markdown`` (a README section) without each sentence, parenthesis, table row or code line that names what
    ``hide`` matches (by default what a student's page may not say; for a section marked for instructors,
    :data:`FOR_DEVELOPERS`), with the comment lines that continue a dropped code line. A sentence that tells a reader
    something and names a test file keeps its point when the README puts the file in a parenthesis."""
    kept, dropped = [], False
    for prose, text in _units(markdown):
        if prose:
            text = _sentences_for_readers(text, hide)
        continues = dropped and text.startswith(" ") and text.lstrip().startswith("#")
        dropped = (prose and not text) or (not prose and bool(hide.search(text))) or continues
        if not dropped:
            kept.append(text)
    return "\n".join(kept)


# --- navigation -----------------------------------------------------------------------------------------------------

def first_heading(nb: nbformat.NotebookNode, default: str) -> str:
    """The text of the notebook's first ``# heading`` (markdown marks removed), or ``default``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return re.sub(r"[*`$]", "", line[2:]).strip()
    return default


# The README's section that notebook 07 sends its readers to (its GPU script): a page of its own on the site.
BEYOND = "Beyond the laptop: TRL, real checkpoints, real data"
# The pages written from the README, not executed, in the header's order: (stem, header label, title)
WRITTEN_PAGES = (("ppo_vs_dpo", "PPO vs DPO", "PPO vs DPO: the shipped comparison"),
                 ("beyond_the_laptop", "At scale", BEYOND))


def link_readme_sections(nb: nbformat.NotebookNode) -> None:
    """Make each mention in ``nb``'s markdown of the README's section that the site shows as a page (:data:`BEYOND`)
    a link to that page: on the site the README itself is not one click away."""
    mention = f'README\'s section "{BEYOND}"'
    for cell in nb.cells:
        if cell.cell_type == "markdown" and mention in cell.source:
            cell.source = cell.source.replace(mention, f"[{mention}](beyond_the_laptop.html)")


def header_links(titles: dict[str, str], current: str, graded: bool) -> list[dict]:
    """The header's links (``href``, ``label``, ``title`` tooltip, ``spoken`` name, ``current``): home, each
    notebook by its number, the comparison, TRL at scale and, when any notebook has exercises, the exercises and
    grading page."""
    links = [("index", "Home", "dpo-teach: the course")]
    links += [(name, name[:2], title) for name, title in titles.items()]
    links += WRITTEN_PAGES
    links += [("grading", "Grading", "Exercises and grading")] * graded
    return [{"href": f"{stem}.html", "label": label, "title": title, "spoken": _spoken_link(label, title),
             "current": stem == current or (stem == "grading" and current.startswith("grading_"))}
            for stem, label, title in links]


def _spoken_link(label: str, title: str) -> str:
    """A header link's name for a screen reader (its ``aria-label``): "Notebook 01: The KL objective" for a number;
    a label in words with the page's title after a dash, unless the title starts with it."""
    if label.isdigit():
        return f"Notebook {label}: {title}"
    return title if title.lower().startswith(label.lower()) else f"{label} – {title}"


def neighbours(titles: dict[str, str], current: str) -> dict[str, dict | None]:
    """The notebook pages before and after ``current`` (``{"prev": {"href", "title"} or None, "next": ...}``)."""
    names = list(titles)
    at = names.index(current)
    return {side: {"href": f"{names[i]}.html", "title": titles[names[i]]} if 0 <= i < len(names) else None
            for side, i in (("prev", at - 1), ("next", at + 1))}
