"""What the instructor should know about a submission's code, found without running it.

Two kinds of finding, from the code cells a student wrote or changed (a cell identical to one of the released
notebook's is the course's own and is not scanned):

- **grader**: code that reaches for the grading machinery or the interpreter's insides: loading ``ctypes``,
  ``gc``, ``inspect``, ``signal``, ``subprocess``, ``threading``, ``importlib`` or ``builtins``; assigning to an
  attribute of a module (``torch.allclose = ...``) or to ``__builtins__``; defining a name that shadows a builtin;
  ``exec``/``eval``/``compile``/``__import__``/``setattr``/``globals()``; frames, code objects, ``sys.modules``,
  ``sys.settrace``, signals, ``os.kill``/``fork``/``write``; IPython's event hooks; paths into ``/proc``, tests
  or bundles; otter beyond ``otter.Notebook(...)`` and ``grader.check(...)``. Such a notebook scores 0 until an
  instructor has looked at it (``grade.py``).
- **reference**: an answer that calls the package's own implementation of the question it answers (the function
  the question's tests compare it with: ``dpo_teach.losses.dpo_loss`` for ``dpo_loss``), directly, through an
  alias or a wrapper. The course rule, stated in notebook 00: write your own; the package's version is used only
  after your exercise. That question scores 0.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable

GRADER_MODULES = {"ctypes", "gc", "inspect", "signal", "subprocess", "multiprocessing", "threading", "_thread",
                  "importlib", "builtins", "socket", "pty", "resource", "sysconfig", "site", "runpy"}
GRADER_CALLS = {"exec", "eval", "compile", "__import__", "setattr", "delattr", "globals", "vars", "breakpoint",
                "get_ipython"}
GRADER_ATTRIBUTES = {"__code__", "__globals__", "__builtins__", "__closure__", "__subclasses__", "f_locals",
                     "f_globals", "f_back", "f_builtins", "gi_frame", "tb_frame", "_getframe", "settrace",
                     "setprofile", "modules", "meta_path", "path_hooks", "kill", "killpg", "fork", "forkpty",
                     "system", "popen", "execv", "execve", "spawnv", "dup", "dup2", "fdopen", "write", "_exit",
                     "setsid", "events", "register_magic_function"}
GRADER_PATHS = re.compile(r"/proc\b|/dev/|autograder|(^|/)tests(/|$)|(^|/)test/|/test$|\.zip$|\botter\b")  # not "test"
OTTER_ALLOWED = {"Notebook", "check", "check_all", "export", "to_pdf"}
# Input-building helpers that a question's tests call, which an answer may call too.
INPUT_HELPERS = {"dpo_teach.logprobs.pad_rows", "dpo_teach.logprobs.PreferenceCollator",
                 "dpo_teach.logprobs.reference_logprobs"}
# Package functions a question's tests use as a tool, which its answer may use too: the step's loss is an argument,
# not its answer; the gradient weight may be read off autograd through the loss (notebook 03 does so above it).
ALLOWED = {"dpo_training_step": {"dpo_teach.losses.dpo_loss"}, "dpo_gradient_weight": {"dpo_teach.losses.dpo_loss"}}
_CHECK = re.compile(r"""grader\.check\(\s*["'](\w+)["']""")
_REFERENCE = re.compile(r"dpo_teach(?:\.\w+)+")


def references(tests: dict[str, list[dict]]) -> dict[str, set[str]]:
    """question → the package functions its tests compare the answer with (named in the tests' code)."""
    found = {}
    for question, cases in tests.items():
        named = set(_REFERENCE.findall("\n".join(case["code"] for case in cases)))
        named = {n for n in named if n.count(".") >= 2 and not n.rsplit(".", 1)[1][:1].isupper()}
        found[question] = named - INPUT_HELPERS - ALLOWED.get(question, set())
    return found


def _code(source) -> str:
    text = "".join(source) if isinstance(source, list) else source
    # IPython's line magics and shell escapes are not Python; they are run as they are, and not scanned
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in text.splitlines())


class _Visitor(ast.NodeVisitor):
    def __init__(self, aliases: dict[str, str]):
        self.aliases, self.grader, self.used = aliases, [], set()

    def qualified(self, node) -> str | None:
        """``L.dpo_loss`` → ``dpo_teach.losses.dpo_loss`` when ``L`` is an import of ``dpo_teach.losses``."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return ".".join([self.aliases[node.id], *reversed(parts)])
        return None

    def flag(self, node, what: str) -> None:
        self.grader.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] in GRADER_MODULES:
                self.flag(node, f"imports {alias.name}")
            if alias.name.startswith("dpo_teach.grading") or alias.name.startswith("otter."):
                self.flag(node, f"imports {alias.name}")

    def visit_ImportFrom(self, node):
        module = node.module or ""
        if module.split(".")[0] in GRADER_MODULES or module.startswith("otter"):
            self.flag(node, f"imports from {module}")
        if module.startswith("dpo_teach.grading") and [a.name for a in node.names] != ["find_notebook"]:
            self.flag(node, f"imports from {module}")

    def visit_Name(self, node):
        if node.id in self.aliases:
            self.used.add(self.aliases[node.id])
        if node.id in GRADER_CALLS or node.id == "__builtins__":
            self.flag(node, f"uses {node.id}")
        if isinstance(node.ctx, ast.Store) and hasattr(builtins, node.id) and not node.id.startswith("_"):
            self.flag(node, f"shadows the builtin {node.id}")

    def visit_FunctionDef(self, node):
        if hasattr(builtins, node.name):
            self.flag(node, f"shadows the builtin {node.name}")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Attribute(self, node):
        name = self.qualified(node)
        if name:
            self.used.add(name)
        base = node.value.id if isinstance(node.value, ast.Name) else None
        if node.attr in GRADER_ATTRIBUTES and (base in (None, "os", "sys", "signal") or node.attr.startswith("_")):
            self.flag(node, f"uses .{node.attr}")
        if base in ("otter", "grader") and node.attr not in OTTER_ALLOWED:
            self.flag(node, f"uses {base}.{node.attr}")
        if isinstance(node.ctx, (ast.Store, ast.Del)) and base is not None and (
                base in self.aliases or base in ("torch", "np", "numpy", "math", "F", "nn", "sys", "os")):
            self.flag(node, f"assigns {base}.{node.attr}")
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str) and GRADER_PATHS.search(node.value):
            self.flag(node, f"names the path {node.value[:40]!r}")


def _aliases(trees: list[ast.AST]) -> dict[str, str]:
    """Every name bound to a module or function by an import anywhere in the notebook, with what it names."""
    aliases = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    return aliases


def _definitions(tree: ast.AST, aliases: dict[str, str]) -> dict[str, tuple[set[str], set[str]]]:
    """Each top-level name a cell defines (``def``, ``class``, assignment) → (package names its code uses, the
    notebook's names it refers to)."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
        else:
            continue
        visitor = _Visitor(aliases)
        visitor.visit(node)
        for name in names:
            found[name] = (visitor.used, _free_names(node) - {name})
    return found


def _free_names(node: ast.AST) -> set[str]:
    """The names ``node`` reads from the notebook: for a ``def``, not its parameters or its own local variables (a
    local ``pi_star`` is not the notebook's ``pi_star``), but every read that Python resolves to the notebook's
    globals, in nested functions, lambdas and comprehensions too, and what its default values read. Python's own
    scoping (``symtable``) decides, so a name bound only in an inner scope cannot hide a global call."""
    names: set[str] = set()

    def walk(table: symtable.SymbolTable, top: bool) -> None:
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (top or symbol.is_global()):
                names.add(symbol.get_name())
        for child in table.get_children():
            walk(child, False)

    walk(symtable.symtable(ast.unparse(node), "<cell>", "exec"), True)
    return names


def answer_names(released: list[dict]) -> dict[str, set[str]]:
    """question → the names its answer cells define, in the notebook as released (the cells otter tags as answers,
    each followed by its ``grader.check("question")``)."""
    found: dict[str, set[str]] = {}
    cells = [c for c in released if c.get("cell_type") == "code"]
    for index, cell in enumerate(cells):
        if "otter_answer_cell" not in cell.get("metadata", {}).get("tags", []):
            continue
        question = next((m.group(1) for later in cells[index:]
                         for m in [_CHECK.search(_code(later.get("source", "")))] if m), None)
        try:
            tree = ast.parse(_code(cell.get("source", "")))
        except SyntaxError:
            continue
        if question:
            found.setdefault(question, set()).update(_definitions(tree, {}))
    return found


def scan(cells: list[dict], released: list[dict], tests: dict[str, list[dict]]) -> dict:
    """``{"grader": [finding, ...], "reference": {question: [package function, ...]}}`` for a notebook's cells
    (``released``: the student notebook as the course gave it out)."""
    given = {_code(c.get("source", "")).strip() for c in released if c.get("cell_type") == "code"}
    code_cells = [_code(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]
    trees = []
    for source in code_cells:
        try:
            trees.append(ast.parse(source))
        except SyntaxError:
            trees.append(None)  # the cell fails when it runs; nothing to scan
    aliases = _aliases([t for t in trees if t is not None])
    found = {"grader": [], "reference": {}}
    definitions: dict[str, tuple[set[str], set[str]]] = {}
    for index, (source, tree) in enumerate(zip(code_cells, trees)):
        if tree is None:
            continue
        definitions.update(_definitions(tree, aliases))
        if source.strip() not in given:
            visitor = _Visitor(aliases)
            visitor.visit(tree)
            found["grader"] += [f"code cell {index + 1}, {finding}" for finding in visitor.grader]
    answers = answer_names(released)
    for question, package in references(tests).items():
        used, seen = set(), set()
        todo = list(answers.get(question, ()))
        while todo:  # the answer, and every function of the notebook it calls, however deep
            name = todo.pop()
            if name in seen or name not in definitions:
                continue
            seen.add(name)
            used |= definitions[name][0]
            todo += definitions[name][1]
        if used & package:
            found["reference"][question] = sorted(used & package)
    return found
