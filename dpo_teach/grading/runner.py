"""One submitted notebook, run where the grader cannot be reached (``main``: in a fork of the zygote, ``zygote.py``,
or ``python -m dpo_teach.grading _run`` with ``--unsafe``).

``judge.py`` starts this process inside the sandbox (``sandbox.py``) and talks to it over its stdin and stdout, one
JSON object per line, every line carrying the job's id:

1. grader → runner: the job (the notebook's text, limits, the sandbox's mounts). No test is in it.
2. runner: enters the sandbox (where it cannot, it says ``sandbox_failed`` with why, and ends: the grader takes
   that event only before the first ``cell``, while no student code has run), takes **private references** to
   everything a test relies on (the builtins, every loaded ``torch``, ``numpy``, ``math`` and ``dpo_teach`` module's
   attributes, ``torch.Tensor``'s methods), then runs the notebook's code cells in an IPython shell with a per-cell
   time limit, telling the grader which cell it is in (``cell``) and what failed (``error``); ``grader.check`` cells
   do nothing here (otter is not loaded).
3. runner → grader: ``ready``, with what the notebook changed of those references (``tampered``). Every change
   is undone before any test runs.
4. grader → runner, one question at a time: that question's test cases, as the sources of their doctest examples
   (parsed by the grader), and a nonce (so no test is in the process while the notebook's cells run, and no reply
   can be written before its question); runner → grader: pass/fail per case, with the nonce. Test code runs with
   the private builtins and the pristine modules; a case during which the student's code changes a reference
   again fails, and is reported. A case that the runner itself ended (its alarm, a changed reference) says so in a
   field of its own (``stopped``), never only in its message's text, which the student's code can write too. What
   the runner itself uses then (``json``, ``io``, ``signal``) is among the references, and it encodes and decodes
   with private instances.

The runner only reports; the grader decides the score (``grade.py``): points come from the manifest, a reply
with another job's id or out of turn voids the notebook's score.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
import types
from pathlib import Path

# what tests rely on, and what the runner itself uses while they run
WATCHED = ("torch", "numpy", "math", "dpo_teach", "builtins", "operator", "functools", "json", "io", "signal")
CLASSES = ("torch.Tensor", "torch.nn.Module", "torch.nn.Parameter", "json.JSONDecoder", "json.JSONEncoder")
MISSING = object()
# What a library rebinds in its own namespace as it works, called from any code: torch.set_default_dtype sets
# torch.Storage to the new dtype's storage class. Put back after each cell and test, but never tampering (before: a
# correct answer that set float64 inside itself was flagged, its notebook scored 0).
LIBRARY_STATE = {"torch.Storage"}
CELL_FILES = ("<ipython-input-", "<cell")  # IPython's names for the code of a cell
STDLIB = os.path.dirname(os.__file__) + os.sep  # the standard library's Python code (functools, inspect, ...)


def _in_stdlib(filename: str) -> bool:
    """Whether code comes from the standard library (not from a package installed beside it, in site-packages)."""
    return filename.startswith(STDLIB) and "-packages" + os.sep not in filename


def _through_stdlib(frame):
    """``(the notebook's frame or None, the standard-library frame it called)``: up from ``frame`` past the standard
    library's own Python code (``functools.singledispatch``'s wrapper, ``ctypes.string_at`` around its C call,
    ``logging``'s ``currentframe``) to the first frame that is not; it counts where it is the notebook's code."""
    entry = None
    while frame is not None and _in_stdlib(frame.f_code.co_filename):
        entry, frame = frame, frame.f_back
    return (frame if frame is not None and frame.f_code.co_filename.startswith(CELL_FILES) else None), entry


def _caller_in_notebook(frame) -> bool:
    """Whether ``frame`` is the notebook's code, or the first frame above the standard library's code it runs is."""
    return _through_stdlib(frame)[0] is not None


def _frame_for_notebook(frame) -> bool:
    """Whether a frame taken where ``frame`` runs goes to the notebook's code: ``frame`` is the notebook's, or the
    standard library's, called by the notebook's code through a function that hands frames over (any but
    :data:`HONEST_FRAME_USES`)."""
    notebook, entry = _through_stdlib(frame)
    return notebook is not None and (entry is None or entry.f_code.co_name not in HONEST_FRAME_USES.get(
        entry.f_code.co_filename[len(STDLIB):].replace(os.sep, "/"), ()))


class References:
    """Private references to what tests rely on, taken before student code runs; ``restore`` puts them back."""

    def __init__(self) -> None:
        self.modules = {name: m for name, m in list(sys.modules.items())
                        if type(m) is types.ModuleType and name.split(".")[0] in WATCHED}
        self.attributes = {name: dict(vars(m)) for name, m in self.modules.items()}
        self.classes = {}
        for qualified in CLASSES:
            module, _, attr = qualified.rpartition(".")
            cls = getattr(self.modules[module], attr)
            self.classes[qualified] = (cls, dict(vars(cls)))
        self.builtins = dict(vars(builtins))
        torch = self.modules["torch"]
        self.torch_kernels = frozenset(getattr(torch.library, "_impls", ()))  # every kernel torch.library registered
        self.classes_before = {id(c) for c in _tensor_like_candidates(torch.Tensor)}

    def torch_overrides(self) -> list[str]:
        """What changes torch's answers beneath its functions, where private references cannot reach: a function or
        dispatch mode left active (ended here) and a kernel of torch's own operators registered by the notebook
        (``torch.library``: reported, as it cannot be undone here)."""
        torch_c, found = self.modules["torch"]._C, []
        device_context = getattr(sys.modules.get("torch.utils._device"), "DeviceContext", None)
        function_modes = [torch_c._get_function_stack_at(i) for i in range(torch_c._len_torch_function_stack())]
        for kind, left, length, pop in (
                # torch.set_default_device leaves its own mode on the stack by design: it changes no answer
                ("function", any(type(m) is not device_context for m in function_modes),
                 torch_c._len_torch_function_stack, torch_c._pop_torch_function_stack),
                ("dispatch", torch_c._len_torch_dispatch_stack() > 0,
                 torch_c._len_torch_dispatch_stack, torch_c._pop_torch_dispatch_stack)):
            if left:
                found.append(f"a torch {kind} mode left active (it can change what any torch function returns)")
                while length():
                    pop()
        kernels = getattr(self.modules["torch"].library, "_impls", ())
        new = sorted(k for k in set(kernels) - self.torch_kernels if k.startswith("aten/") and not k.endswith("/Meta"))
        if new:
            found.append(f"torch's own kernel replaced for {', '.join(new[:3])} (torch.library)")
        elif wrong := _wrong_answers(self.modules["torch"]):  # a kernel registered beneath torch.library's record
            found.append(f"torch's own operators answer wrongly ({', '.join(wrong[:3])}): a kernel replaced")
        found += [f"a class written in the notebook that passes for a tensor ({name}): it can change what a test reads "
                  "of an answer" for name in _lying_classes(self.modules["torch"].Tensor, self.classes_before)]
        return found

    def restore(self, strict: bool) -> list[str]:
        """Undo every change to the references; return the changes that count: with ``strict`` (while a test runs)
        any change but a library's own state (:data:`LIBRARY_STATE`), otherwise those that put the notebook's own
        code in place (a library updating itself is put back silently)."""
        changed = []
        for name, module in self.modules.items():
            if sys.modules.get(name) is not module:
                changed.append(f"sys.modules[{name!r}]")
                sys.modules[name] = module
            current = vars(module)
            for key, value in self.attributes[name].items():
                now = current.get(key, MISSING)
                if now is not value:
                    if _counts(f"{name}.{key}", value, now, strict):
                        changed.append(f"{name}.{key}")
                    current[key] = value
        for qualified, (cls, saved) in self.classes.items():
            for key, value in saved.items():
                now = vars(cls).get(key, MISSING)
                if key not in ("__dict__", "__weakref__", "__doc__") and now is not value:
                    if _counts(f"{qualified}.{key}", value, now, strict):
                        changed.append(f"{qualified}.{key}")
                    setattr(cls, key, value)
            for key in set(vars(cls)) - set(saved):
                if _from_notebook(vars(cls)[key]):  # what a library adds to a class (transformers does) stays
                    changed.append(f"{qualified}.{key} (added)")
                    delattr(cls, key)
        if sys.gettrace() is not None or sys.getprofile() is not None:
            changed.append("sys.settrace/sys.setprofile")
            sys.settrace(None)
            sys.setprofile(None)
        return changed + self.torch_overrides()

    def namespace(self, user_ns: dict) -> dict:
        """What test code runs in: the notebook's names, every module among them replaced by the pristine one, the
        usual module names forced to the pristine modules, and a private copy of the original builtins."""
        ns = {}
        for key, value in user_ns.items():
            if key.startswith("_") or key in self.builtins:  # `abs = ...` in the notebook: tests keep the builtin
                continue
            if type(value) is types.ModuleType and value.__name__ in self.modules:
                value = self.modules[value.__name__]
            ns[key] = value
        for alias, name in [("torch", "torch"), ("F", "torch.nn.functional"), ("math", "math"), ("np", "numpy"),
                            ("numpy", "numpy"), ("dpo_teach", "dpo_teach")]:
            if name in self.modules:
                ns[alias] = self.modules[name]
        ns["__builtins__"] = dict(self.builtins)
        ns["__name__"] = "__grader__"
        return ns


def _wrong_answers(torch) -> list[str]:
    """The operators tests compare with that give a wrong answer on known inputs: a kernel of torch's own registered
    by the notebook (through torch's C library object, or torch.library with its record then edited)."""
    zero, one = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 2.0])
    checks = {"allclose": lambda: torch.allclose(zero, one) is False and torch.allclose(one, one) is True,
              "equal": lambda: torch.equal(zero, one) is False,
              "isclose": lambda: torch.isclose(zero, one).tolist() == [False, True],
              "eq": lambda: (zero == one).tolist() == [False, True],
              "lt": lambda: (zero < one).tolist() == [True, False],
              "sub": lambda: (one - zero).tolist() == [1.0, 0.0],
              "abs": lambda: torch.abs(-one).tolist() == [1.0, 2.0],
              "isfinite": lambda: torch.isfinite(zero / zero).tolist() == [False, True]}
    wrong = []
    for name, check in checks.items():
        try:
            ok = check()
        except Exception:  # noqa: BLE001 - a kernel that raises is as wrong as one that lies
            ok = False
        if not ok:
            wrong.append(name)
    return wrong


def _tensor_like_candidates(tensor: type) -> list[type]:
    """Every subclass of ``torch.Tensor``, and every class made directly from ``object`` (a class that is no tensor
    but answers for one: ``__torch_function__``, a ``__class__`` that says ``torch.Tensor``)."""
    found, todo, seen = [], [*tensor.__subclasses__(), *object.__subclasses__()], set()
    while todo:
        cls = todo.pop()
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        found.append(cls)
        if issubclass(cls, tensor):
            todo += cls.__subclasses__()
    return found


TENSOR_HOOKS = ("__torch_function__", "__torch_dispatch__", "__class__")


def _lying_classes(tensor: type, before: set[int]) -> list[str]:
    """The classes made since the runner took its references (``before``: their ids then) that can make an answer
    say what a test wants to read: a subclass of ``torch.Tensor``, or a class with ``__torch_function__``,
    ``__torch_dispatch__`` or its own ``__class__``, unless a module holds it under its name (a library's class,
    imported late). A class's ``__module__`` is its own say, so the module must hold it too; and a method written in
    the notebook, however wrapped (``classmethod(functools.partial(f))``), marks it whatever its name."""
    found = []
    for cls in _tensor_like_candidates(tensor):
        own = type.__dict__["__dict__"].__get__(cls)
        if not (issubclass(cls, tensor) or any(k in own for k in TENSOR_HOOKS)):
            continue
        written = any(_from_notebook(v) for v in own.values())
        name, module_name = type.__dict__["__name__"].__get__(cls), own.get("__module__")
        module = sys.modules.get(module_name) if type(module_name) is str else None
        held = type(module) is types.ModuleType and vars(module).get(name) is cls and module_name != "__main__"
        if written or (id(cls) not in before and not held):
            found.append(name)
    return sorted(found)


def _counts(qualified: str, before, now, strict: bool) -> bool:
    """Whether a changed attribute is tampering: the notebook's code put in place, or (while a test runs) one public
    function swapped for another, such as ``torch.allclose = torch.is_tensor``. A library updating its own state
    (a cached flag; and, while a test runs too, what :data:`LIBRARY_STATE` names) does not count; it is undone all
    the same."""
    if _from_notebook(now):
        return True
    key = qualified.rsplit(".", 1)[1]
    return strict and qualified not in LIBRARY_STATE and not key.startswith("_") and callable(before) and callable(now)


def _from_notebook(value, depth: int = 0) -> bool:
    """Whether ``value`` is (or wraps, however many wrappers deep: a classmethod of a partial, or is an instance of) a
    function or class written in the notebook."""
    for obj in (value, getattr(value, "__func__", None), getattr(value, "func", None), type(value)):
        code = getattr(obj, "__code__", None)
        if isinstance(code, types.CodeType) and code.co_filename.startswith(CELL_FILES):
            return True
        if isinstance(obj, type) and obj.__module__ == "__main__":
            return True
    return depth < 5 and any(_from_notebook(inner, depth + 1) for inner in _inside(value))


def _inside(value) -> list:
    """What a wrapper holds, read from its type's own fields (no code of the notebook's runs): a partial's function,
    a method's, staticmethod's or classmethod's function, a property's getter and setter."""
    kind = type(value)
    if issubclass(kind, functools.partial):
        return [value.func]
    if issubclass(kind, (types.MethodType, staticmethod, classmethod)):
        return [value.__func__]
    if issubclass(kind, property):
        return [f for f in (value.fget, value.fset) if f is not None]
    return []


def _student_threads() -> list[str]:
    """Python threads whose code was written in the notebook: they could change things while tests run."""
    return [f"thread {t.name!r} started by the notebook" for t in threading.enumerate()
            if _from_notebook(getattr(t, "_target", None)) or _from_notebook(t)]


# What a notebook's code has no honest use for and an impersonator of the runner needs: the process's memory (where
# each question's nonce and the job's id are) and the runner's channel. Seen at run time by an audit hook, whatever
# the code that asked looked like (a path assembled from fragments, open(3)); the notebook is then flagged and its
# process ended at once, before it can write anything. Python code that walks frames (f_back) or reads memory through
# a raw address it made up is beyond an audit hook: the scan (scan.py) looks for those.
MEMORY_FILES = re.compile(r"/proc/(self|thread-self|\d+)(/task/\d+)?/mem$")  # its contents (maps: only the layout,
# which psutil's memory_full_info reads honestly)
DESCRIPTOR_FILES = re.compile(r"/(proc/(self|thread-self|\d+)(/task/\d+)?|dev)/fd/(\d+)$")  # N of /dev/fd/N
PIPE = re.compile(r"/fd/pipe:\[(\d+)\]$")  # where such a path leads when N is a pipe
MEMORY_EVENTS = {"gc.get_objects": "listed the process's objects (gc.get_objects)",
                 "gc.get_referrers": "followed references between objects (gc.get_referrers)",
                 "gc.get_referents": "followed references between objects (gc.get_referents)",
                 "ctypes.string_at": "read memory at a raw address (ctypes.string_at)",
                 "ctypes.wstring_at": "read memory at a raw address (ctypes.wstring_at)",
                 "ctypes.cdata": "read memory at a raw address (ctypes from_address)",
                 "sys._current_frames": "took every thread's frame (sys._current_frames)",
                 "ctypes.dlsym": "called into a C library by name (ctypes)"}
FRAME_ATTRIBUTES = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}  # object.__getattr__'s audited frame routes
# What hands the notebook's code a frame by a call, whatever name reached the function (``logging.__dict__["current"
# + "frame"]``, ``inspect.stack``, ``traceback.walk_stack``, a debugger): the runner's main, with its channel and the
# question's nonce, is a few ``f_back`` above any frame.
FRAME_EVENTS = {"sys._getframe": "took a frame (sys._getframe, or a function of the standard library around it)",
                "sys.settrace": "set a trace function, which is handed every frame (sys.settrace, a debugger)",
                "sys.setprofile": "set a profile function, which is handed every frame (sys.setprofile)"}
# The standard library's functions that take a frame for the notebook's code without handing it over: a log record's
# place, a traceback printed, a class named after the module that made it. ``{file: the function the notebook
# called}``; through any other standard-library function, or none, a frame taken for the notebook's code is stopped.
HONEST_FRAME_USES = {
    "logging/__init__.py": {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "log"},
    "traceback.py": {"print_exc", "format_exc", "print_exception", "format_exception", "print_tb", "format_tb",
                     "extract_tb", "print_stack", "format_stack", "extract_stack", "print_last", "__init__"},
    "collections/__init__.py": {"namedtuple"}, "typing.py": {"__init__"}, "enum.py": {"__call__"},
    "warnings.py": {"warn"}}


def watch_memory(channel: set[int], report) -> None:
    """Install the audit hook (it cannot be removed): ``report(what)`` is called, once, when the notebook's code opens
    the process's memory, or a channel descriptor (``channel``: the runner's own file descriptors), by any
    route, or lists or follows objects, reads raw memory or takes a frame through a traceback or generator from its
    own code (a cell's function: the libraries it calls do that honestly, in tracebacks). ``report`` must end the
    process."""
    realpath, join, getcwd, getframe, fstat = os.path.realpath, os.path.join, os.getcwd, sys._getframe, os.fstat
    pipes = {fstat(fd).st_ino for fd in channel}
    busy = []  # the hook's own calls raise events too

    def forbidden(path: str) -> bool:
        full = realpath(join(getcwd(), path))
        descriptor, pipe = DESCRIPTOR_FILES.search(path), PIPE.search(full)
        return bool(MEMORY_FILES.match(full) or MEMORY_FILES.match(path) or descriptor and int(descriptor[4]) in channel
                    or pipe and int(pipe[1]) in pipes)

    def hook(event: str, args: tuple) -> None:
        if busy:
            return
        busy.append(True)
        try:
            what = None
            if event == "open" and args:
                target = args[0]
                if isinstance(target, int):
                    what = "opened the grader's channel" if target in channel else None
                elif isinstance(target, (str, bytes)) and forbidden(os.fsdecode(target)):
                    what = f"opened {os.fsdecode(target)[:100]}: the process's memory, or the grader's channel"
            elif event in MEMORY_EVENTS and _caller_in_notebook(getframe(1)):
                what = MEMORY_EVENTS[event]
            elif event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRIBUTES \
                    and _frame_for_notebook(getframe(1)):  # (a traceback printed reads it honestly)
                what = f"took a frame through {args[1]}, where the runner's own objects are"
            elif event in FRAME_EVENTS and _frame_for_notebook(getframe(1)):
                what = FRAME_EVENTS[event]
            if what is not None:
                report(what)
        finally:
            busy.clear()

    sys.addaudithook(hook)


def _kill_other_processes() -> None:
    """Inside the sandbox's PID namespace this process is the first: end everything the notebook started."""
    if os.getpid() != 1:
        return
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != 1:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


def _fake_otter() -> types.ModuleType:
    """``import otter`` in a graded notebook: its checks are the grader's job, so they do nothing here."""
    otter = types.ModuleType("otter")

    class Notebook:
        def __init__(self, *args, **kwargs):
            pass

        def __getattr__(self, name):  # check, check_all, export, ...
            return lambda *args, **kwargs: None

    otter.Notebook = Notebook
    return otter


class ReferenceCalls:
    """Who calls the package's implementation of a question while that question's tests run: each function a
    question's tests compare its answer with (``scan.references``) is wrapped wherever the package holds it (its
    module, modules that import it by name, a registry such as ``losses.LOSSES``) before any student code runs, so
    an alias the notebook takes later is the wrapper too. A call whose caller is the notebook's own code (a cell's
    function, lambda or loop) during the question's tests is recorded; the tests' own calls and the package's calls
    of its own functions are not. This catches what the static scan cannot follow (an alias under an ``if``, a
    ``getattr`` with a constant name, a re-export)."""

    def __init__(self, references: dict[str, list[str]]) -> None:
        self.question: str | None = None
        self.calls: dict[str, set[str]] = {}
        wanted = {name for names in references.values() for name in names}
        self.owners = {name: {q for q, names in references.items() if name in names} for name in wanted}
        self.known: dict[int, str] = {}  # id of each reference and of its wrapper → its name
        self.codes: dict[tuple[str, str], str] = {}  # (file, qualified name) of each reference's code → its name
        for name in sorted(wanted):
            module_name, _, attr = name.rpartition(".")
            try:
                original = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                continue
            if callable(original):
                wrapper = self._wrap(name, original)
                self._replace(original, wrapper)
                self.known.update({id(original): name, id(wrapper): name})
                code = getattr(original, "__code__", None)
                if isinstance(code, types.CodeType):
                    self.codes[(code.co_filename, code.co_qualname)] = name

    def _wrap(self, name: str, original):
        watch = self

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            if watch.question in watch.owners[name] and _caller_in_notebook(sys._getframe(1)):
                watch.calls.setdefault(watch.question, set()).add(name)
            return original(*args, **kwargs)

        with contextlib.suppress(ValueError, TypeError):  # a callable with no signature to read
            wrapper.__signature__ = inspect.signature(original)  # what losses.loss_options reads of a loss
        del wrapper.__wrapped__  # inspect.unwrap, .__wrapped__: the wrapper itself, not the unwatched original
        return wrapper

    def check_answers(self, question: str, cases: list[dict], user_ns: dict) -> None:
        """Before a question's tests: record the question's references that the notebook's names the tests call
        lead to without a call of their own from a cell, so that the wrapper cannot see them: ``functools.partial``
        of one, an object whose ``__call__`` is one, ``singledispatch`` over one, a global the answer's code reads
        that holds one (or its ``__wrapped__`` original), or a fresh copy of the package's module (``pydoc.importfile``:
        the same code, from the package's file)."""
        import ast

        names = set()
        for case in cases:
            for source in case["examples"]:
                try:
                    names |= {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
                except SyntaxError:
                    continue
        mine = {n for n, owners in self.owners.items() if question in owners}
        for name in sorted(n for n in names if not n.startswith("_") and n in user_ns):
            reached = self._reaches(user_ns[name], mine, set(), 0)
            if reached:
                self.calls.setdefault(question, set()).add(reached)

    def _reaches(self, obj, mine: set[str], seen: set[int], depth: int) -> str | None:
        """The reference of ``mine`` that ``obj`` is, wraps or reads, or None. Only types and dictionaries are read,
        never an attribute that could run the notebook's code (a property, ``__getattr__``, a metaclass's)."""
        kind = type(obj)
        if id(obj) in seen or depth > 4 or issubclass(kind, types.ModuleType):
            return None
        seen.add(id(obj))
        if self.known.get(id(obj)) in mine:
            return self.known[id(obj)]
        inner: list = _inside(obj)  # a partial, a method
        if kind is types.FunctionType:
            code = obj.__code__
            if self.codes.get((code.co_filename, code.co_qualname)) in mine:  # a fresh copy of the package's module
                return self.codes[(code.co_filename, code.co_qualname)]
            own = obj.__dict__
            inner += [own[k] for k in ("__wrapped__",) if k in own]
            if type(own.get("registry")) in (dict, types.MappingProxyType):  # functools.singledispatch
                inner += list(own["registry"].values())
            if code.co_filename.startswith(CELL_FILES) and type(obj.__globals__) is dict:  # the notebook's function
                names, attributes = _code_names(code)
                read = [obj.__globals__[n] for n in names if n in obj.__globals__]
                inner += read + [cell.cell_contents for cell in obj.__closure__ or () if _filled(cell)]
                for module in (m for m in read if type(m) is types.ModuleType):  # the package's, or a fresh copy
                    inner += [vars(module)[a] for a in attributes if a in vars(module)]  # (pydoc.importfile)
        elif kind in (list, tuple, set, frozenset, dict) and len(obj) <= 100:  # a box the answer reads from
            inner += list(obj.values()) if kind is dict else list(obj)
        elif not inner and not issubclass(kind, type) and callable(obj):  # an instance: its class's own __call__
            for klass in type.__dict__["__mro__"].__get__(kind):
                namespace = type.__dict__["__dict__"].__get__(klass)
                if "__call__" in namespace:
                    inner.append(namespace["__call__"])
                    break
        for item in inner:
            found = self._reaches(item, mine, seen, depth + 1)
            if found:
                return found
        return None

    @staticmethod
    def _replace(original, wrapper) -> None:
        for module_name, module in list(sys.modules.items()):
            if module_name.split(".")[0] != "dpo_teach" or module_name.startswith("dpo_teach.grading"):
                continue
            for key, value in list(vars(module).items()):
                if value is original:
                    setattr(module, key, wrapper)
                elif type(value) is dict:
                    for k, v in list(value.items()):
                        if v is original:
                            value[k] = wrapper

    def taken(self, question: str) -> list[str]:
        return sorted(self.calls.get(question, ()))


def _code_names(code: types.CodeType) -> tuple[set[str], set[str]]:
    """The global names a function's code (and the code of the functions and lambdas in it) reads, and the attribute
    names it reads (kept apart: ``B.kl_divergence`` is no read of a global ``kl_divergence``)."""
    import dis

    names, attributes = set(), set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            names.add(instruction.argval)
        elif instruction.opname in ("LOAD_ATTR", "LOAD_METHOD"):
            attributes.add(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner_names, inner_attributes = _code_names(const)
            names, attributes = names | inner_names, attributes | inner_attributes
    return names, attributes


def _filled(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _preload(modules: list[str]) -> None:
    """The package modules the tests rely on, loaded now so that they are among the private references (the rest
    of the package loads when the notebook imports it: each module costs start-up time)."""
    for name in modules:
        if name.startswith("dpo_teach.") and not name.startswith("dpo_teach.grading"):
            try:
                importlib.import_module(name)
            except ImportError:
                continue


class _Alarm:
    """SIGALRM after ``seconds``: the code running then gets ``TimeoutError``; then ``grace`` s more per expiry."""

    def __init__(self, seconds: int, grace: int = 3):
        self.seconds, self.grace, self._now = seconds, min(seconds, grace), seconds
        self.expired = 0  # how many times it has gone off: a test case it ended is marked so (``run_cases``)
        self.words = f"time limit: a cell ran past the grader's limit of {seconds} s per cell"  # what it raises
        signal.signal(signal.SIGALRM, self._expire)

    def _expire(self, signum, frame):
        self.expired += 1
        signal.alarm(self.grace)
        raise TimeoutError(self.words)

    def __enter__(self):
        signal.signal(signal.SIGALRM, self._expire)
        signal.alarm(self._now)

    def __exit__(self, *exc):
        signal.alarm(0)
        self._now = self.seconds

    def limit(self, seconds: int) -> _Alarm:
        """This alarm, once, with another limit."""
        self._now = max(1, int(seconds))
        return self


def run_cases(cases: list[dict], refs: References, user_ns: dict, alarm: _Alarm,
              seconds: float | None = None) -> tuple[list[dict], list[str]]:
    """Each case's examples (their sources, parsed by the grader) in a fresh grader namespace; a case passes when
    none raises. What the code under test prints is not compared with anything (a debug print cannot fail a
    test).

    A failed case's ``stopped`` says when the runner itself ended it, never from the text of what was raised:
    ``"time_limit"`` when its alarm went off during the case (also if the code under test caught that
    ``TimeoutError`` and raised something else), ``"tampered"`` when the code changed a reference; then ``message``
    is the runner's own words. Otherwise ``stopped`` is None and ``message`` is what the case raised (the student's
    words, or the test's). ``seconds``: each case's limit (the alarm's own by default; its short grace for a question
    whose public cases already ran out of time)."""
    results, tampered = [], []
    seconds = alarm.seconds if seconds is None else seconds
    for case in cases:
        ns, message, stopped = refs.namespace(user_ns), "", None
        stdout, expired = sys.stdout, alarm.expired
        try:
            sys.stdout = io.StringIO()
            with alarm.limit(seconds):
                for source in case["examples"]:
                    exec(compile(source, "<test>", "single"), ns)  # noqa: S102 - the grader's own tests
        except BaseException as e:  # noqa: BLE001 - a failed test, whatever it raised
            message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if alarm.expired > expired:
                message, stopped = f"TimeoutError: {alarm.words}", "time_limit"
                seconds = alarm.grace  # the question's next cases call the same looping function: a short limit
        finally:
            sys.stdout = stdout
        changed = refs.restore(strict=True) + _student_threads()
        if changed:
            message, stopped = f"the code under test changed {', '.join(changed[:3])} while it was tested", "tampered"
            tampered += changed
        results.append({"passed": not message, "message": message[:300], "stopped": stopped})
    return results, tampered


def code_cells(notebook: dict) -> list[tuple[int, str]]:
    """(index, source) of every code cell that has code: what the runner runs, and reports, in this order."""
    found = []
    for index, cell in enumerate(notebook.get("cells", [])):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        if cell.get("cell_type") == "code" and source.strip():
            found.append((index, source))
    return found


def describe_error(error: BaseException, source: str) -> str:
    """A cell's error for the grade row: its type and message (a long one keeps its start and its end, where
    Python and torch say what went wrong) and the line it came from, in this cell or in a function of the
    notebook's that it called."""
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if len(text) > 1000:
        text = f"{text[:300]} … {text[-600:]}"
    first_line = next((s for s in source.splitlines() if s.strip()), "")[:60]
    lines = [f.line for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(CELL_FILES)]
    where = f", at `{lines[-1].strip()[:80]}`" if lines and lines[-1] and lines[-1].strip() != first_line.strip() \
        else ""
    return f"{text} (in cell `{first_line}`{where})"


def main(unavailable: Exception | None = None) -> int:
    """Run the job the grader sends on stdin. ``unavailable``: why this process could not enter its sandbox (the
    zygote's fork, ``sandbox.isolate``); the runner then says only that (``sandbox_failed``) and runs no cell."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    requests = os.fdopen(os.dup(0), "r")
    encode, decode = json.JSONEncoder().encode, json.JSONDecoder().decode  # private: a notebook can patch json's
    job = decode(requests.readline())
    job_id = job["id"]

    def send(event: str, **fields) -> None:
        protocol.write(encode({"id": job_id, "event": event, **fields}) + "\n")

    private = job["private"]
    if job.get("sandbox") and unavailable is None:
        from dpo_teach.grading import sandbox

        try:
            sandbox.enter(private, **job["sandbox"])
        except (sandbox.SandboxUnavailable, OSError, ValueError) as e:  # a mount, a limit: before any student code
            unavailable = e
    if unavailable is not None:  # the machine's problem, not the notebook's: the grader stops its batch
        send("sandbox_failed", reason=str(unavailable))
        return 1
    for sub in ("home", "tmp", "work"):
        os.makedirs(os.path.join(private, sub), exist_ok=True)
    os.environ.update(HOME=f"{private}/home", TMPDIR=f"{private}/tmp", MPLBACKEND="Agg",
                      MPLCONFIGDIR=f"{private}/tmp", IPYTHONDIR=f"{private}/home/.ipython")
    tempfile.tempdir = None  # found again from TMPDIR: the zygote's imports may have settled on /tmp
    if job.get("sandbox"):  # a forkserver (3.14's default) needs a Unix socket by name: the sandbox refuses it
        import multiprocessing

        multiprocessing.set_start_method("fork", force=True)
    os.chdir(f"{private}/work")
    log = os.open(f"{private}/output.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(log, 1)  # what the notebook prints; stderr stays the grader's log of this job (crashes, warnings)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)

    import numpy  # the modules tests rely on, loaded before the references are taken
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    _preload(job.get("preload", []))
    sys.modules["otter"] = _fake_otter()
    calls = ReferenceCalls(job.get("references", {}))  # before the references: they then hold the wrappers
    refs = References()
    shell = InteractiveShell.instance()
    # `!cmd` lines: IPython runs them on a pseudo-terminal, and the sandbox's /dev has none ("out of pty devices",
    # the command not run); through a plain pipe they run as in Jupyter (`!pip install` then fails for want of a
    # network, and says so, without stopping the cell)
    shell.system = shell.system_raw
    # a cell's code as the scan reads it (scan.py: IPython's input transformations alone), not through the prefilter
    # IPython adds for a one-line cell: with automagic, `time exec(...)` ran as a magic while the scan, for which it is
    # a syntax error, had nothing to read in it (and `run x.py`, `sx cmd`, an alias, ran the same way)
    shell.transform_cell = shell.input_transformer_manager.transform_cell
    alarm = _Alarm(int(job["cell_timeout"]))
    import random

    random.seed(0)  # every notebook starts from the same seeds: a notebook that samples without seeding grades
    numpy.random.seed(0)  # the same each time
    torch.manual_seed(0)
    Path(job["file_name"]).write_text(job["notebook"], encoding="utf-8")
    write, end = os.write, os._exit

    def caught(what: str) -> None:  # written at once, before the notebook's code can write anything of its own
        with contextlib.suppress(OSError):
            write(protocol.fileno(), (encode({"id": job_id, "event": "caught", "what": what}) + "\n").encode())
        end(3)

    watch_memory({protocol.fileno(), requests.fileno()}, caught)
    for index, source in code_cells(decode(job["notebook"])):
        send("cell", index=index)
        with alarm:
            result = shell.run_cell(source, store_history=False)
        error = result.error_before_exec or result.error_in_exec
        if error is not None:
            try:
                text = describe_error(error, source)
            except Exception:  # noqa: BLE001 - an error whose message itself fails (the notebook's own class)
                text = f"{type(error).__name__} (in a cell whose error could not be described)"
            send("error", text=text)
    _kill_other_processes()
    send("ready", tampered=refs.restore(strict=False) + _student_threads())
    looping = set()  # questions whose cases ran out of time
    for line in requests:
        request = decode(line)
        if request.get("id") != job_id or "cases" not in request:
            break
        question = request.get("question")
        calls.check_answers(question, request["cases"], shell.user_ns)
        calls.question = question
        try:
            results, tampered = run_cases(request["cases"], refs, shell.user_ns, alarm,
                                          alarm.grace if question in looping else None)
        finally:
            calls.question = None
        if any(r["stopped"] == "time_limit" for r in results):
            looping.add(question)  # its hidden cases, asked for later, call the same looping function
        send("result", question=question, nonce=request.get("nonce"), cases=results, tampered=tampered,
             reference_calls=calls.taken(question))
    protocol.flush()
    os._exit(0)  # no interpreter shutdown: nothing the notebook registered (atexit, __del__) runs after the tests
