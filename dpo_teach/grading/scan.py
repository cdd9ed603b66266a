"""What the instructor should know about a submission's code, found without running it.

Two kinds of finding, from the code cells a student wrote or changed, as IPython runs them (its magics and shell
escapes translated; a cell identical to one of the released notebook's is the course's own and is not scanned):

- **grader**: code that reaches for the grading machinery or the interpreter's insides. Frames, tracebacks and code
  objects, by any route (``e.__traceback__``, ``sys.exc_info()``, ``sys._getframe``, ``inspect.currentframe``/
  ``stack``, ``traceback.walk_stack``, ``tb_frame``/``f_back``/``gi_frame`` and the like, also named in a string, or
  ``getattr``/``hasattr``/``attrgetter`` with a computed name); loading ``ctypes``, ``gc``, ``signal``,
  ``subprocess``, ``threading``, ``importlib``, ``builtins``, ``pickle`` or a module that runs code from strings;
  starting or signalling processes (``os.kill``, ``fork``, ``posix_spawn``, ``exec*``, ``spawn*``, ``system``,
  ``setsid``, shell escapes ``!cmd`` and magics other than a few harmless ones); file descriptors (``os.write``,
  ``dup2``, ``fdopen``); ``sys.modules``/``settrace``; assigning to anything reached from a module
  (``torch.allclose = ...``, ``doctest.DocTestParser.x = ...``) or to ``__builtins__``; putting code in place of a
  builtin that the tests use, at the notebook's top level (``def abs``, ``all = lambda ...``); ``exec``/``eval``/
  ``compile``/``__import__``/``setattr``/``globals()``/``vars()`` of a module; IPython's shell; paths into
  ``/proc``, tests, bundles, masters or ``.git``; otter beyond ``otter.Notebook(...)`` and ``grader.check(...)``.
  Such a notebook scores 0 until an instructor has looked at it (``grade.py``). Ordinary code is not flagged: a
  method or dunder in a class, a loop variable named like a builtin, ``sys.stdout.write``, ``model.modules()``,
  ``vars(config)``, ``inspect.getsource`` (reading the package's code), a plot titled "tests".
- **reference**: an answer that calls the package's own implementation of the question it answers (the function
  the question's tests compare it with: ``dpo_teach.losses.dpo_loss`` for ``dpo_loss``), directly, through an
  alias or a wrapper. The course rule, stated in notebook 00: write your own; the package's version is used only
  after your exercise. That question scores 0.

The scan reads code, not what code builds at run time: a module the notebook writes to a file and imports, or code
assembled from strings without ``exec``, is beyond it (``course/INSTRUCTOR.md``, "What this does not protect
against"). The reference rule is also checked at run time (``runner.ReferenceCalls``): a call of the question's
package function from the notebook's own code while the question's tests run counts the same, however it was
reached (an alias under an ``if``, ``getattr`` with a constant, a registry such as ``losses.LOSSES``).
"""

from __future__ import annotations

import ast
import re
import symtable

from dpo_teach.grading.rules import Visitor, builtins_used, ipython_code, root_name, shadows

# Input-building helpers that a question's tests call, which an answer may call too.
INPUT_HELPERS = {"dpo_teach.logprobs.pad_rows", "dpo_teach.logprobs.PreferenceCollator",
                 "dpo_teach.logprobs.reference_logprobs"}
ANSWER_CHECKS = "dpo_teach.answer_checks."  # what tests check an answer's result with first: tools, not answers
# Package functions a question's tests use as a tool, which its answer may use too: the step's loss is an argument,
# not its answer; the gradient weight may be read off autograd through the loss (notebook 03 does so above it).
ALLOWED = {"dpo_training_step": {"dpo_teach.losses.dpo_loss", "dpo_teach.losses.ipo_loss"},
           "dpo_gradient_weight": {"dpo_teach.losses.dpo_loss"}}
_CHECK = re.compile(r"""grader\.check\(\s*["'](\w+)["']""")
_REFERENCE = re.compile(r"dpo_teach(?:\.\w+)+")

def references(tests: dict[str, list[dict]]) -> dict[str, set[str]]:
    """question → the package functions its tests compare the answer with (named in the tests' code)."""
    found = {}
    for question, cases in tests.items():
        named = set(_REFERENCE.findall("\n".join(case["code"] for case in cases)))
        named = {n for n in named if n.count(".") >= 2 and not n.rsplit(".", 1)[1][:1].isupper()
                 and not n.startswith(ANSWER_CHECKS)}
        found[question] = named - INPUT_HELPERS - ALLOWED.get(question, set())
    return found



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


def _module_aliases(trees: list[ast.AST], aliases: dict[str, str]) -> dict[str, str]:
    """``aliases`` and the names a plain assignment binds to one of them (``s = sys``, ``cudnn = torch.backends``):
    for the grader's rules only (a local variable named like such a name is not a call of the package)."""
    modules = dict(aliases)
    for _ in range(2):  # an alias of an alias
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Assign) and root_name(node.value) in modules:
                    path = ".".join(Visitor({}, modules).parts(node.value))
                    modules.update({t.id: path for t in node.targets if isinstance(t, ast.Name)})
    return modules


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
        visitor = Visitor(aliases)
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
                         for m in [_CHECK.search(ipython_code(later.get("source", "")))] if m), None)
        try:
            tree = ast.parse(ipython_code(cell.get("source", "")))
        except SyntaxError:
            continue
        if question:
            found.setdefault(question, set()).update(_definitions(tree, {}))
    return found


def _unreadable(index: int, error: BaseException) -> str:
    """The finding for a code cell nested too deeply for the scan (``1+1+...+1`` 5,000 times): the scan raised, and
    the row was the grader's error instead of a notebook to read."""
    return (f"code cell {index + 1}, nested too deeply for the scan to read it ({type(error).__name__}): read it "
            "yourself")


def scan(cells: list[dict], released: list[dict], tests: dict[str, list[dict]]) -> dict:
    """``{"grader": [finding, ...], "reference": {question: [package function, ...]}}`` for a notebook's cells
    (``released``: the student notebook as the course gave it out)."""
    given = {ipython_code(c.get("source", "")).strip() for c in released if c.get("cell_type") == "code"}
    code_cells = [ipython_code(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]
    trees, found = [], {"grader": [], "reference": {}}
    for index, source in enumerate(code_cells):
        try:
            trees.append(ast.parse(source))
        except SyntaxError:
            trees.append(None)  # the cell fails when it runs; nothing to scan
        except (RecursionError, MemoryError) as e:  # nested deeper than the parser goes: it may still run
            trees.append(None)
            found["grader"].append(_unreadable(index, e))
    aliases = _aliases([t for t in trees if t is not None])
    modules = _module_aliases([t for t in trees if t is not None], aliases)
    shadowed = builtins_used(tests)
    definitions: dict[str, tuple[set[str], set[str]]] = {}
    for index, (source, tree) in enumerate(zip(code_cells, trees)):
        if tree is None:
            continue
        definitions.update(_definitions(tree, aliases))
        if source.strip() not in given:
            visitor = Visitor(aliases, modules)
            try:
                visitor.visit(tree)
                visitor.grader += [f"line {line}: shadows the builtin {name}" for line, name in shadows(tree, shadowed)]
            except RecursionError as e:
                found["grader"].append(_unreadable(index, e))
                continue
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
