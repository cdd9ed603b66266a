"""The scan's rules: what in a notebook's code reaches the grading machinery or the interpreter's insides.

``scan.py`` applies them to every cell a student wrote or changed (its docstring lists what they flag, and what
ordinary code they leave alone). Each rule is about a name the code uses, an attribute path (``["sys",
"modules"]``, the root through the notebook's imports, :func:`reaches`), a call (``getattr`` with a computed name,
an IPython magic), a string (a path, a frame field) or a top-level binding (code in place of a builtin the tests
use, :func:`shadows`). The cells are read as IPython runs them (:func:`ipython_code`): a shell escape or a magic is
a ``get_ipython()`` call here, judged like any other.
"""

from __future__ import annotations

import ast
import builtins
import functools
import re

GRADER_MODULES = {"ctypes", "_ctypes", "gc", "signal", "subprocess", "_posixsubprocess", "multiprocessing",
                  "threading", "_thread", "importlib", "builtins", "socket", "pty", "posix", "resource", "sysconfig",
                  "site", "runpy", "faulthandler", "pdb", "bdb", "pickle", "_pickle", "marshal", "copyreg", "shelve",
                  "dill", "cloudpickle", "code", "codeop", "doctest", "timeit"}  # the last four run code from strings
# What the grader cell that `make assign` writes imports from dpo_teach.grading (grading/student.py); any other name
# from there is the grading machinery.
STUDENT_NAMES = {"find_notebook", "checks_ignore_prints"}
GRADER_CALLS = {"exec", "eval", "compile", "__import__", "setattr", "delattr", "globals", "breakpoint", "get_ipython",
                "getattr", "hasattr", "vars", "__builtins__", "__builtin__"}  # getattr, hasattr, vars: see Visitor
# Attributes that lead to frames, tracebacks, code objects, the interpreter's or IPython's insides, on any object.
FRAME_FIELDS = {"tb_frame", "tb_next", "tb_lasti", "tb_lineno", "f_back", "f_builtins", "f_code", "f_globals",
                "f_locals", "f_lasti", "f_lineno", "f_trace", "f_trace_lines", "f_trace_opcodes", "f_generator",
                "gi_frame", "gi_code", "gi_running", "gi_suspended", "gi_yieldfrom", "cr_frame", "cr_code",
                "cr_await", "cr_running", "cr_origin", "cr_suspended", "ag_frame", "ag_code", "ag_await",
                "ag_running"}
INTERNALS = FRAME_FIELDS | {
    "__code__", "__globals__", "__builtins__", "__closure__", "__subclasses__", "__traceback__", "__getattribute__",
    "__self__", "__import__", "with_traceback", "exc_info", "last_traceback", "last_exc", "_getframe",
    "_current_frames", "_current_exceptions", "currentframe", "walk_stack", "walk_tb", "settrace", "setprofile",
    "getouterframes", "getinnerframes", "getframeinfo", "getgeneratorlocals", "getcoroutinelocals",
    "getasyncgenlocals", "getclosurevars", "get_referrers", "get_referents", "get_objects", "get_ipython", "events",
    "register_magic_function", "_ip"}
# Starting, signalling or leaving processes: names no honest notebook uses, on any object (``torch.os.fork``).
PROCESS_CALLS = {"kill", "killpg", "fork", "forkpty", "vfork", "posix_spawn", "posix_spawnp", "spawnl", "spawnle",
                 "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "execl", "execle", "execlp",
                 "execlpe", "execv", "execve", "execvp", "execvpe", "fexecve", "_exit", "setsid", "setpgid",
                 "setpgrp", "dup2", "fdopen", "pidfd_open", "pidfd_send_signal", "pthread_kill", "openpty",
                 "register_at_fork", "create_subprocess_exec", "create_subprocess_shell", "ProcessPoolExecutor"}
# ... and names that are ordinary elsewhere (``f.write``, ``model.modules()``): flagged on ``os``, ``sys``, ``inspect``.
_OS_OWNED = {"system", "popen", "write", "read", "dup", "pipe", "open", "close", "getppid"}
OWNED = {"os": _OS_OWNED, "posix": _OS_OWNED,  # posix: what os re-exports
         "sys": {"modules", "meta_path", "path_hooks", "path_importer_cache", "monitoring", "addaudithook",
                 "exception", "last_value", "last_type", "displayhook", "excepthook", "breakpointhook",
                 "unraisablehook", "remote_exec"},
         "inspect": {"stack", "trace"}}
# A string that names a frame's or a traceback's insides (also as a fragment to join: "tb_" + "frame").
INTERNAL_WORDS = re.compile(r"\b(" + "|".join(sorted(FRAME_FIELDS | {
    "__code__", "__globals__", "__builtins__", "__closure__", "__subclasses__", "__traceback__", "_getframe",
    "_current_frames", "with_traceback", "exc_info"})) + r")\b")
FRAGMENTS = {"tb_", "f_", "gi_", "cr_", "ag_", "__glob", "__buil", "__trace"}
GRADER_PATHS = re.compile(r"/proc\b|/dev/|autograder|(^|/)tests/|/tests$|(^|/)test/|/test$|\.zip$|\botter\b"
                          r"|(^|/)\.git(/|$)|(^|/)masters(/|$)")  # not "tests" alone: a plot's title
OTTER_ALLOWED = {"Notebook", "check", "check_all", "export", "to_pdf"}
# A set-up command in the notebook itself (Colab's habit): flagged like any shell command, with what to do instead.
INSTALLS = re.compile(r"\s*(sudo\s+)?(pip3?|conda|mamba|micromamba|uv(\s+pip)?|python3?\s+-m\s+pip|apt(-get)?)\s+"
                      r"(install|add|sync)\b")
def _install_hint(command: str) -> str:
    """What to do instead, when ``command`` (a shell line or a magic's) installs packages."""
    return (" (installing belongs in a terminal or a notebook of your own, not in the notebook you hand in: delete "
            "the cell and hand it in again)" if INSTALLS.match(command) else "")
# IPython magics that run nothing of their own; those whose argument or body is Python code have it scanned.
SAFE_MAGICS = {"matplotlib", "config", "precision", "pprint", "autoreload", "pinfo", "pinfo2", "pdoc", "pdef",
               "psource", "who", "whos"}
CODE_MAGICS = {"time", "timeit", "capture"}


def builtins_used(tests: dict[str, list[dict]]) -> set[str]:
    """The builtins the tests' code names (``abs``, ``float``, ``isinstance`` ...), read from the examples the
    grader parsed once (``judge.test_case``) and sends to the runner: the scan and the tests read the same code."""
    names = set()
    for cases in tests.values():
        for case in cases:
            for source in case["examples"]:
                try:
                    tree = ast.parse(source)
                except SyntaxError:
                    continue
                names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and hasattr(builtins, n.id)}
    return {n for n in names if not n.startswith("_")}


@functools.lru_cache(maxsize=1)
def _transformer():
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager()


def ipython_code(source) -> str:
    """A cell as IPython runs it: magics and shell escapes become ``get_ipython()`` calls (scanned as such)."""
    text = "".join(source) if isinstance(source, list) else source
    try:
        return _transformer().transform_cell(text)
    except Exception:  # noqa: BLE001 - IPython cannot read it either: the cell fails as it is
        return text


def reaches(parts: list[str]) -> str | None:
    """What an attribute path (``["sys", "modules"]``, ``["?", "tb_frame"]``: ``?`` for what is not a name) reaches
    that the grader must hear of, or None."""
    name, owner = parts[-1], parts[-2] if len(parts) > 1 else None
    if name in INTERNALS or name in PROCESS_CALLS:
        return f"uses .{name}"
    if name in GRADER_MODULES:
        return f"reaches the module {name}"
    if owner in OWNED and (name in OWNED[owner] or (owner != "inspect" and name.startswith("_"))):
        return f"uses {owner}.{name}"
    if parts[:2] == ["dpo_teach", "grading"] and len(parts) > 2 and not student_side(parts):
        return f"uses {'.'.join(parts)}"
    return None


def student_side(parts: list[str]) -> bool:
    """Whether an attribute path is one of the names the grader cell imports (:data:`STUDENT_NAMES`)."""
    return parts[:3] == ["dpo_teach", "grading", "student"] and len(parts) == 4 and parts[3] in STUDENT_NAMES


class Visitor(ast.NodeVisitor):
    """The rules applied to one cell's tree: ``grader`` collects what the instructor must hear of (``line N: ...``),
    ``used`` the package's names the code uses (for ``scan.py``'s reference rule); ``aliases``: the notebook's
    imports."""

    def __init__(self, aliases: dict[str, str], modules: dict[str, str] | None = None):
        self.aliases, self.grader, self.used = aliases, [], set()
        self.modules = aliases if modules is None else modules  # imports and plain re-bindings (``s = sys``)
        self.vetted: set[int] = set()  # names a call has been judged by (``getattr(x, "shape")``)

    def qualified(self, node) -> str | None:
        """``L.dpo_loss`` → ``dpo_teach.losses.dpo_loss`` when ``L`` is an import of ``dpo_teach.losses``."""
        root, attributes = _attribute_chain(node)
        if isinstance(root, ast.Name) and root.id in self.aliases:
            return ".".join([self.aliases[root.id], *attributes])
        return None

    def parts(self, node) -> list[str]:
        """``o.path.join`` → ``["os", "path", "join"]`` (the root through the notebook's imports); ``?`` for a root
        that is not a name (``f().x`` → ``["?", "x"]``)."""
        root, attributes = _attribute_chain(node)
        names = self.modules.get(root.id, root.id).split(".") if isinstance(root, ast.Name) else ["?"]
        return [*names, *attributes]

    def flag(self, node, what: str) -> None:
        self.grader.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] in GRADER_MODULES or alias.name.startswith(("dpo_teach.grading", "otter.")) \
                    or (alias.name.startswith("IPython") and not alias.name.startswith("IPython.display")):
                self.flag(node, f"imports {alias.name}")

    def visit_ImportFrom(self, node):
        module = node.module or ""
        names = [a.name for a in node.names]
        if module.split(".")[0] in GRADER_MODULES or module.startswith("otter") or (
                module.startswith("IPython") and module != "IPython.display") or (
                module.startswith("dpo_teach.grading") and not all(
                    student_side([*module.split("."), name]) for name in names)):
            self.flag(node, f"imports from {module}")
        for name in names:
            found = reaches([*module.split("."), name])
            if found:
                self.flag(node, f"imports {name} from {module}: {found}")

    def visit_Name(self, node):
        if node.id in self.aliases:
            self.used.add(self.aliases[node.id])
        if node.id in GRADER_CALLS and id(node) not in self.vetted:
            computed = " with a computed name" if node.id in ("getattr", "hasattr") else ""
            self.flag(node, f"uses {node.id}{computed}")

    def visit_Call(self, node):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if name in ("getattr", "hasattr") and len(node.args) >= 2 and _text(node.args[1]) is not None:
            self.vetted.add(id(func))  # a constant name: judged as the attribute it is
            found = reaches([*self.parts(node.args[0]), _text(node.args[1])])
            if found:
                self.flag(node, f"{name}(..., {_text(node.args[1])!r}): {found}")
        elif name == "vars" and node.args and root_name(node.args[0]) not in self.modules:
            self.vetted.add(id(func))  # vars(config); vars() and vars(a module) are flagged as uses of vars
        elif isinstance(func, ast.Attribute) and func.attr in ("attrgetter", "methodcaller"):
            texts = [_text(a) for a in node.args[:1 if func.attr == "methodcaller" else None]]
            if None in texts or not texts:
                self.flag(node, f"{func.attr} with a computed name")
            for found in filter(None, (reaches(["?", *t.split(".")]) for t in texts if t)):
                self.flag(node, f"{func.attr}: {found}")
        elif _is_shell(func):
            self._magic(node)
        self.generic_visit(node)

    def _magic(self, node) -> None:
        """``get_ipython().run_line_magic("time", "...")`` and the like, from IPython's translation of a cell."""
        shell = node.func.value.func
        kind, args = node.func.attr, [_text(a) for a in node.args]
        if kind not in ("run_line_magic", "run_cell_magic") or not args or args[0] is None:
            if kind not in ("system", "getoutput"):
                self.flag(node, f"uses IPython's {kind}")
            elif args and args[0]:
                self.flag(node, f"runs the shell command !{args[0][:60]}{_install_hint(args[0])}")
            else:
                self.flag(node, "runs a shell command (!...)")
            self.vetted.add(id(shell))
            return
        magic = args[0].lstrip("%")
        self.vetted.add(id(shell))
        if magic == "load_ext" and args[1:2] == ["autoreload"] or magic in SAFE_MAGICS:
            return
        if magic not in CODE_MAGICS or None in args:
            self.flag(node, f"runs the IPython magic %{magic}"
                      + _install_hint(f"{magic} {args[1] if len(args) > 1 and args[1] else ''}"))
            return
        for code in ([_options_removed(args[1])] if magic != "capture" else []) + args[2:3]:
            try:
                inner = ast.parse(ipython_code(code))
            except SyntaxError:
                continue  # IPython cannot run it either
            visitor = Visitor(self.aliases, self.modules)
            visitor.visit(inner)
            self.grader += [f"line {getattr(node, 'lineno', '?')}: in %{magic}, {f}" for f in visitor.grader]

    def visit_Attribute(self, node):
        name = self.qualified(node)
        if name:
            self.used.add(name)
        parts = self.parts(node)
        found = reaches(parts)
        if found:
            self.flag(node, found)
        base = node.value.id if isinstance(node.value, ast.Name) else None
        if base in ("otter", "grader") and node.attr not in OTTER_ALLOWED:
            self.flag(node, f"uses {base}.{node.attr}")
        root = root_name(node)
        if isinstance(node.ctx, (ast.Store, ast.Del)) and (
                root in self.modules or root in ("torch", "np", "numpy", "math", "F", "nn", "sys", "os")):
            self.flag(node, f"assigns {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_keyword(self, node):
        value = node.value.value if isinstance(node.value, ast.Constant) else None
        if (node.arg, value) in (("weights_only", False), ("allow_pickle", True)):
            self.flag(node.value, f"unpickles ({node.arg}={value}): pickle calls whatever it names")
        self.generic_visit(node)

    def visit_JoinedStr(self, node):
        for value in node.values:  # the text of an f-string: "f_{i}.png" is no fragment of "f_back"
            if isinstance(value, ast.Constant):
                self.constant(value, fragments=False)
            else:
                self.visit(value)

    def visit_Constant(self, node):
        self.constant(node)

    def constant(self, node, fragments: bool = True) -> None:
        if not isinstance(node.value, str):
            return
        if found := GRADER_PATHS.search(node.value):
            self.flag(node, f"names {found.group(0)!r}, which a notebook must leave to the grader, in the string "
                            f"{node.value[:40]!r}")
        words = INTERNAL_WORDS.findall(node.value)
        if words or (fragments and node.value in FRAGMENTS):
            self.flag(node, f"names {(words or [node.value])[0]!r} in a string")


def _attribute_chain(node) -> tuple[ast.AST, list[str]]:
    """``torch.nn.Module.forward`` → (the node of ``torch``, ``["nn", "Module", "forward"]``)."""
    attributes = []
    while isinstance(node, ast.Attribute):
        attributes.append(node.attr)
        node = node.value
    return node, attributes[::-1]


def root_name(node) -> str | None:
    """The name an attribute path starts from (``torch`` for ``torch.nn.Module.forward``), or None."""
    root, _ = _attribute_chain(node)
    return root.id if isinstance(root, ast.Name) else None


def _text(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_shell(func) -> bool:
    """Whether a call is ``get_ipython().<something>(...)``: how IPython runs a magic or a shell escape."""
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name) and func.value.func.id == "get_ipython")


def _options_removed(line: str) -> str:
    """The code of ``%time``/``%timeit`` without timeit's options (``-n 10 -r 3 f(x)`` → ``f(x)``)."""
    words = line.split(" ")
    while words and words[0].startswith("-"):
        option = words.pop(0)
        if option in ("-n", "-r", "-p") and words:
            words.pop(0)
    return " ".join(words)


def shadows(tree: ast.Module, names: set[str]) -> list[tuple[int, str]]:
    """(line, name) for each builtin in ``names`` that a cell puts code in place of at the notebook's top level: a
    ``def``/``class`` or an import under its name, an assignment of a lambda, a name or an attribute to it
    (``abs = my_abs``), a ``global`` declaration of it in a function. Not a loop variable, nor a computed value
    (``sum = x.sum()``), nor a method: the tests never see the notebook's names for builtins anyway (the runner
    gives them its own, ``runner.References.namespace``); code put in their place is what an attack looks like."""
    found = [(n.lineno, name) for n in ast.walk(tree) if isinstance(n, ast.Global) for name in n.names]

    def top(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.append((node.lineno, node.name))
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.extend((node.lineno, a.asname or a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(
                    node.value, (ast.Lambda, ast.Name, ast.Attribute)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found.extend((node.lineno, t.id) for t in targets if isinstance(t, ast.Name))
            for field in ("body", "orelse", "finalbody"):  # if, for, while, try, with: still the top level
                top(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                top(handler.body)

    top(tree.body)
    return [(line, name) for line, name in found if name in names]


