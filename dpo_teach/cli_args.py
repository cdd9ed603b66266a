"""The ``dpo-teach`` command line: its parser, the types that check each argument as it is parsed, and the checks of
arguments against each other and the file system that run before any work (see :mod:`dpo_teach.cli` for the
commands).

A bad value stops the parser with one line naming the flag, the value and what is expected; an argument that parses
but cannot be used raises :class:`UsageError`, which the command prints as one line (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import warnings
from pathlib import Path

from dpo_teach.utils import leads_through_loop, nearest_existing


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A value such as -inf, -nan, -1e-3 or -1_000 after a space is a value, not an unknown option: argparse's own
        # pattern (Python 3.11-3.13) takes only -5 and -.5, and said "--beta: expected one argument" where the value's
        # own check says what is wrong
        self._negative_number_matcher = re.compile(
            r"^-(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(e[-+]?\d[\d_]*)?$|^-(inf|infinity|nan)$", re.I)

    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an option that the chosen command does not take is that command's error: `dpo-teach
        train --steps 10` points to `dpo-teach train --help`, where argparse pointed to `dpo-teach --help`."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})
            commands.get(getattr(parsed, "command", None), self).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


_KIND = {int: "a positive integer", float: "a positive number"}

# Upper bounds of the arguments that size something the system must hold: past them Python, torch or the OS fail
# deep inside (an OverflowError in random.choices, torch.set_num_threads, signal.alarm or a deadline's timestamp).
MAX_PAIRS = 10**7  # --pairs: 10 million prompts sampled is days of CPU; far beyond, random.choices overflows
MAX_PROCESSES = 1024  # --threads, --workers, --jobs: more than any machine's cores
MAX_CELL_TIMEOUT = 2**31 - 1  # --cell-timeout, seconds: the largest alarm signal.alarm can set (a C int)
MAX_TIMEOUT = 10**7  # --timeout, seconds per notebook (115 days): a deadline past year 9999 is no timestamp


def _number(kind, text: str, wanted: str):
    """``text`` as a finite ``kind`` (int or float), or the one-line error that says what was ``wanted``."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive(kind, maximum: int | None = None):
    def parse(text: str):
        value = _number(kind, text, _KIND[kind])
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _at_least(minimum: int, why: str, maximum: int | None = None):
    def parse(text: str) -> int:
        value = _positive(int, maximum)(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} ({why}), got {text}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _seed(text: str) -> int:
    """A seed NumPy accepts too: an integer from 0 to 2**32 − 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {2**32 - 1}, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to {2**32 - 1} (NumPy's range), got {text}")
    return value


class UsageError(ValueError):
    """An argument that parses but cannot be used (e.g. an --out nobody can write); checked before any work."""


class SettingWarning(UserWarning):
    """A setting that runs but probably does not do what its user meant; the message says why and what is usual."""


TINY_BETA = 1e-3  # below it, a loss of β·h reads as if frozen while AdamW moves the policy at full speed
# below it, the gradients (β times the log-ratio's, whose parameters' gradients are at most about 1) are smaller than
# AdamW's ε (1e-8), which then outweighs them: the steps shrink with β, and the policy barely moves, if at all
STALL_BETA = 1e-9
MAX_EPOCHS = 10**5  # --epochs: passes over the pairs; far more than any run needs, and an ETA that still prints
HUGE_BETA = 100.0  # above it, a slip of units: β·h saturates (DPO and kin) or IPO's target 1/(2β) is next to 0


def check_writable(path: str | Path, flag: str, directory: bool) -> None:
    """Refuse an output path that could not be written at the end of a long run: check it before the run. A symbolic
    link is checked where it points, as the writes follow it (``utils.atomic_file``, ``atomic_dir``)."""
    try:
        target, named = Path(os.path.realpath(path)), f"{flag} {path}"
        _check_no_loop(path, named)
        _check_writable(target, named, directory)
        _check_not_virtual(path, named, stdout=flag == "--out" and not directory)
        if not directory:  # a directory's own check is check_out_replaceable's, where the run writes it beside
            _check_name_beside(target, named, "the file")
    except OSError as e:  # e.g. a name longer than the file system takes
        raise UsageError(f"{flag} {path}: {e.strerror or e}; pass another path") from None


def _check_no_loop(path: str | Path, named: str) -> None:
    """Refuse a path that leads through a loop of symbolic links (``a -> b``, ``b -> a``): the run's writes would fail
    after all its work (the data sampled, the sweep trained), or a check raise from deep inside pathlib."""
    if leads_through_loop(path):
        raise UsageError(f"{named}: leads through a loop of symbolic links (each names the next, and the last the "
                         "first); remove the loop, or pass another path")


VIRTUAL = ("/dev", "/proc", "/sys")  # file systems of the kernel's: nothing can be created or renamed there
MEMORY_DISK = "/dev/shm"  # but this one, in /dev, is a folder in memory (tmpfs), where files are made and renamed


def _check_not_virtual(path: str | Path, named: str, stdout: bool) -> None:
    """Refuse an output in /dev, /proc or /sys, as given or where it leads (``/dev/stdout``: the terminal, a pipe, or
    the file standard output is redirected to, which the command would replace at its end, losing what it printed
    there): the output is written beside it and renamed into its place, which cannot be done there. ``stdout``: the
    command writes ``-`` to standard output (``data --out -``)."""
    for where in {os.path.abspath(path), os.path.realpath(path)}:
        if where.startswith(MEMORY_DISK + "/"):
            continue
        top = next((v for v in VIRTUAL if where == v or where.startswith(v + "/")), None)
        if top is not None:
            dash = ", or - for standard output" if stdout else ""
            raise UsageError(f"{named}: lies in {top}, a file system of the kernel's, where the output cannot be "
                             f"created (it is written beside its path and renamed into place); pass a path on a "
                             f"disk{dash}")


def _check_writable(path: Path, named: str, directory: bool) -> None:
    """The checks of :func:`check_writable` on the resolved ``path``; ``named``: the flag and the path as given."""
    if path.exists() and not path.is_dir() and not path.is_file():  # a device (/dev/null), a pipe, a socket
        if directory:
            raise UsageError(f"{named}: is a device or a pipe, not a directory; pass a directory")
        raise UsageError(f"{named}: is a device or a pipe, not a regular file, which the command would replace by "
                         f"one; pass a file path{', or - for standard output' if named.startswith('--out ') else ''}")
    want, other = ("a directory", "a file") if directory else ("a file", "a directory")
    if path.exists() and path.is_dir() != directory:
        raise UsageError(f"{named}: is {other}, expected {want}; pass another path")
    if not directory and path.is_file() and not os.access(path, os.W_OK):  # a rename in its folder would replace it
        raise UsageError(f"{named}: is read-only; make it writable (chmod u+w) or pass another path")
    start = path if directory else path.parent
    existing = nearest_existing(start)
    if not existing.is_dir():
        raise UsageError(f"{named}: {existing} is a file, so nothing can be created under it; pass another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{named}: {existing} is not writable for you; pass a path you can write to")


def _path(text: str) -> str:
    """A path argument: not empty (an unset shell variable, ``"$DIR"``, would otherwise mean the default or the
    current directory) and UTF-8 (the tokenizer's and the results' files are written and read under it)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path (an unset shell variable?); pass a path")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{text.encode('utf-8', 'surrogateescape')!r} is not UTF-8, which the "
                                         "files written under it need; rename it or pass another path") from None
    return text


def _non_negative(text: str) -> float:
    value = _number(float, text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _label_smoothing(text: str) -> float:
    value = _non_negative(text)
    if value >= 0.5:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.5) (at 0.5 a label says nothing), got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive(float)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _add_dpo_args(p: argparse.ArgumentParser, defaults) -> None:
    from dpo_teach.losses import LOSSES

    g = p.add_argument_group("DPO")
    g.add_argument("--beta", type=_positive(float), default=defaults.beta, help="β, KL-penalty strength (%(default)s)")
    g.add_argument("--lr", type=_positive(float), default=defaults.lr, help="peak learning rate (%(default)s)")
    g.add_argument("--epochs", type=_positive(int, MAX_EPOCHS), default=defaults.epochs,
                   help="passes over the pairs (%(default)s)")
    g.add_argument("--batch-size", type=_positive(int), default=defaults.batch_size,
                   help="pairs per step (%(default)s)")
    g.add_argument("--loss", choices=sorted(LOSSES), default=defaults.loss_type,
                   help="loss variant, a name in dpo_teach.losses.LOSSES (%(default)s = the DPO paper's)")
    g.add_argument("--label-smoothing", type=_label_smoothing, default=None, metavar="EPS",
                   help=f"ε of --loss cdpo, the assumed label-flip probability ({defaults.label_smoothing})")
    g.add_argument("--dpop-lambda", type=_non_negative, default=None, metavar="LAMBDA",
                   help=f"λ of --loss dpop, the weight of its penalty on a chosen log-prob that falls below "
                        f"π_ref's ({defaults.dpop_lambda})")
    g.add_argument("--max-length", type=_positive(int), default=defaults.max_length,
                   help="prompt + completion tokens (%(default)s)")
    g.add_argument("--on-the-fly-ref", action="store_true",
                   help="compute π_ref log-probs every step instead of once before training (same result, slower)")


def apply_dpo_args(cfg, args) -> None:
    """Copy the DPO group's flags (and --seed) into ``cfg``, a :class:`~dpo_teach.dpo.DPOConfig`. A loss's own option
    given with another loss is refused: it would change nothing."""
    cfg.beta, cfg.lr, cfg.epochs, cfg.batch_size = args.beta, args.lr, args.epochs, args.batch_size
    cfg.loss_type, cfg.max_length, cfg.precompute_ref = args.loss, args.max_length, not args.on_the_fly_ref
    cfg.seed = args.seed
    if 0 < args.beta < STALL_BETA and args.loss != "ipo":
        warnings.warn(f"--beta {args.beta:g} is so small that every gradient (β times the log-ratio's) falls below "
                      "AdamW's ε (1e-8), which then outweighs it: the policy barely moves, if at all, and the loss "
                      "stays at its value at β·h = 0 (ln 2 for DPO); usual values are 0.01 to 1", SettingWarning,
                      stacklevel=2)
    elif 0 < args.beta < TINY_BETA and args.loss != "ipo":  # IPO's β sets a target, 1/(2β): there it is no scale
        warnings.warn(f"--beta {args.beta:g} is tiny: the loss will read about its value at β·h = 0 (ln 2 for DPO) "
                      "and the rewards about 0 at every step, yet AdamW divides β out of each step, so the policy "
                      "moves at full speed with next to no pull back to π_ref (notebook 07, Pitfall 2); usual values "
                      "are 0.01 to 1", SettingWarning, stacklevel=2)
    if args.beta > HUGE_BETA:
        warnings.warn(f"--beta {args.beta:g} is huge: " + (
            f"IPO's target margin 1/(2β) is {1 / (2 * args.beta):.2g}, so the loss pulls every pair's log-ratio "
            "margin to about 0 and the policy learns next to no preference; usual values are 0.1 to 1"
            if args.loss == "ipo" else
            "the loss and the rewards read in units of β (rewards in the thousands for log-ratios below 1), a pair "
            "drops out of the loss as soon as π_θ orders it right, and AdamW divides β out of each step, so the policy "
            "moves at full speed on the pairs it still orders wrong; usual values are 0.01 to 1"),
            SettingWarning, stacklevel=2)
    for flag, value, loss, field in (("--label-smoothing", args.label_smoothing, "cdpo", "label_smoothing"),
                                     ("--dpop-lambda", args.dpop_lambda, "dpop", "dpop_lambda")):
        if value is None:
            continue
        if args.loss != loss:
            raise UsageError(f"{flag} is an option of --loss {loss}, and this run's loss is {args.loss}; "
                             f"add --loss {loss}, or leave {flag} out")
        setattr(cfg, field, value)


COMMANDS = ("demo", "data", "grade", "train", "compare")  # build_parser's, in its order


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``dpo-teach`` parser. ``only``: add the arguments of that command alone ("" for none), as :func:`main` does
    with the command it is given, so that ``dpo-teach --help``, ``grade`` and ``compare`` import no torch: the
    defaults that ``demo``, ``data`` and ``train`` print come from config classes whose modules import torch and
    transformers (4-5 s). None: every command's arguments."""
    parser = _Parser(prog="dpo-teach", description="Direct Preference Optimization on a small GPT-2, on a CPU.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="π_ref → preference pairs → DPO → evaluation, with a results table",
                       description="Build (or load from cache) the toy π_ref, sample and label preference pairs, "
                                   "train DPO, evaluate with the ground-truth reward; write metrics.json, figures, "
                                   "samples.md and the trained policy to --out.")
    if only in (None, "demo"):
        _demo_arguments(d)

    m = sub.add_parser("data", help="write a toy preference set as JSONL",
                       description="Sample two completions per prompt from the toy π_ref and label them with "
                                   "Bradley–Terry noise on the ground-truth reward.")
    if only in (None, "data"):
        _data_arguments(m)

    g = sub.add_parser("grade", help="grade a folder of submitted notebooks → grades.csv, grades_by_student.csv, "
                       "grades.json",
                       description="Grade every notebook under SUBMISSIONS_DIR (NAME.ipynb files, or one folder per "
                                   "student) with the tests of its autograder bundle from `make assign`, each "
                                   "notebook in its own sandbox (Linux namespaces: no network, no view of other "
                                   "processes or of the tests, everything read-only) with a time limit per cell and "
                                   "per notebook; the tests run after the notebook and the grader alone decides the "
                                   "score. A notebook that raises, loops, lost cells or is not a notebook at all "
                                   "scores what it earned, with a reason (a file that is not a notebook is skipped, "
                                   "with what to do); one that touches the grading machinery is flagged; an answer "
                                   "that calls the package's own version scores 0 for that question. Only a sandbox "
                                   "that fails to start stops the batch (exit 2); a rerun resumes a stopped or "
                                   "interrupted one, and grading the same folder again grades only the notebooks that "
                                   "are new or changed (--regrade: all). Writes grades.csv (a row per submission, a "
                                   "column per question), grades_by_student.csv (a row per student, for a "
                                   "gradebook), grades.json (also feedback, cell errors, flags, totals per student) "
                                   "and feedback/, a file per student to hand back: each notebook's and question's "
                                   "score and what the student may read of why.")
    g.add_argument("submissions", metavar="SUBMISSIONS_DIR", type=_path, help="folder of submitted notebooks")
    g.add_argument("--out", default="results/grades", type=_path,
                   help="where the reports go: grades.csv, grades_by_student.csv, grades.json, feedback/ "
                        "(%(default)s)")
    g.add_argument("--assignment", help="grade as this assignment, e.g. 03_deriving_dpo, every notebook whose "
                                        "metadata names none of the course's graded assignments (default: read "
                                        "from each notebook's metadata, else from its file name)")
    g.add_argument("--autograder-dir", metavar="DIR", type=_path,
                   help="bundles written by `make assign` (default: course/autograder)")
    g.add_argument("--timeout", type=_positive(float, MAX_TIMEOUT), default=900,
                   help="seconds per notebook; past it a notebook is killed and scores 0 (%(default)s)")
    g.add_argument("--cell-timeout", type=_positive(int, MAX_CELL_TIMEOUT), default=120,
                   help="seconds per cell; past it the cell raises TimeoutError and grading goes on (%(default)s)")
    g.add_argument("--jobs", type=_positive(int, MAX_PROCESSES), default=1,
                   help="notebooks graded in parallel (%(default)s)")
    g.add_argument("--full", action="store_true",
                   help="run notebooks in full mode (default: fast mode, DPO_TEACH_FAST=1; exercises score the same)")
    g.add_argument("--unsafe", action="store_true",
                   help="grade without the sandbox (where there is none, e.g. macOS): only for notebooks you trust")
    g.add_argument("--no-sections", dest="sections", action="store_false",
                   help="each first-level folder of SUBMISSIONS_DIR is one student, whatever its sub-folders hold "
                        "(attempts, weeks: the latest notebook of each assignment is graded); default: a folder whose "
                        "sub-folders hold notebooks of the same assignment is a section, each sub-folder a student")
    g.add_argument("--regrade", action="store_true",
                   help="grade every notebook again (default: a notebook whose file, bundle, settings and grader are "
                        "unchanged since the last batch graded into --out, finished or interrupted, keeps its row)")

    t = sub.add_parser("train", help="train DPO on your own preference file",
                       description="Train a policy with DPO on a JSONL file of {prompt, chosen, rejected} rows "
                                   "(or HH-RLHF {chosen, rejected} dialogues). π_ref is the toy model unless "
                                   "--model points at a save_pretrained directory.")
    if only in (None, "train"):
        _train_arguments(t)

    c = sub.add_parser("compare", help="PPO, GRPO, RLOO, DPO and online DPO on one reward–KL frontier",
                       description="Sweep each method's β or KL coefficient over several seeds: DPO and online DPO "
                                   "(reference refreshed between rounds, or fixed; pairs ordered by the labeller or "
                                   "by the reward model), and PPO, GRPO and RLOO on the "
                                   "learned reward model ('PPO', 'GRPO', 'RLOO') and on the ground-truth reward "
                                   "('PPO-GT', 'GRPO-GT', 'GRPO-GT/token'); evaluate every run at regular intervals "
                                   "(reward, KL, fluency); write results.json, table.md and frontier.png to --out. "
                                   "The full sweep of all methods took 4.5 minutes on 2 free cores (about twice "
                                   "that on a busy machine); --methods DPO PPO PPO-GT alone, 2.5 minutes.")
    c.add_argument("--fast", action="store_true",
                   help="one setting per method (two β for DPO), shorter runs (about a minute on 2 free cores)")
    c.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="run only these methods (default: all; with --fast all but online-DPO-fixed, "
                        "online-DPO-RM and GRPO-GT/token), e.g. --methods DPO PPO PPO-GT")
    c.add_argument("--seeds", type=_seed, nargs="+", help="seeds to repeat everything with (default: 0 1)")
    c.add_argument("--out", type=_path,
                   help="output directory (default: results/compare, or results/compare/fast with --fast)")
    c.add_argument("--workers", type=_positive(int, MAX_PROCESSES), default=2,
                   help="seeds run in parallel processes (%(default)s)")
    c.add_argument("--threads", type=_positive(int, MAX_PROCESSES), default=1,
                   help="torch CPU threads per process (%(default)s)")
    c.add_argument("--asset", metavar="FILE.json", type=_path,
                   help="also write the results compactly here (notebooks/assets/compare_results.json ships them)")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _toy_defaults() -> tuple[list[str], object]:
    """The toy presets' names and the demo's defaults (a ``DemoConfig``), which ``demo``, ``data`` and ``train`` print:
    their modules import torch and transformers, so only those commands' arguments ask for them."""
    from dpo_teach.model import PRESETS
    from dpo_teach.pipeline import DemoConfig

    return sorted(PRESETS), DemoConfig()


def _demo_arguments(d: argparse.ArgumentParser) -> None:
    presets, demo_defaults = _toy_defaults()
    d.add_argument("--seed", type=_seed, default=0, help="one seed for everything (%(default)s)")
    d.add_argument("--preset", choices=presets,
                   help=f"toy model size ({demo_defaults.world.preset}; not with --model)")
    d.add_argument("--pairs", type=_at_least(12, "a sixth of the pairs is held out", MAX_PAIRS),
                   default=demo_defaults.prefs.n_prompts,
                   help="prompts to sample preference pairs for (%(default)s)")
    d.add_argument("--model", metavar="DIR", type=_path,
                   help="use this save_pretrained directory as π_ref (e.g. a real GPT-2)")
    d.add_argument("--out", default=demo_defaults.out_dir, type=_path, help="output directory (%(default)s)")
    d.add_argument("--rebuild", action="store_true", help="rebuild π_ref even when cached (not with --model)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_dpo_args(d, demo_defaults.dpo)


def _data_arguments(m: argparse.ArgumentParser) -> None:
    presets, demo_defaults = _toy_defaults()
    m.add_argument("--out", required=True, type=_path, help="JSONL file to write (- for standard output)")
    m.add_argument("--pairs", type=_positive(int, MAX_PAIRS), default=2000, help="prompts (%(default)s)")
    m.add_argument("--bt-temperature", type=_positive(float), default=0.1, help="label noise τ (%(default)s)")
    m.add_argument("--seed", type=_seed, default=0, help="seed of the prompts, samples and labels; π_ref is the toy "
                                                          "one `train` loads (%(default)s)")
    m.add_argument("--preset", choices=presets, default=demo_defaults.world.preset,
                   help="the toy π_ref that samples the pairs (%(default)s); train them with the same --preset")


def _train_arguments(t: argparse.ArgumentParser) -> None:
    from dpo_teach.dpo import DPOConfig

    presets, demo_defaults = _toy_defaults()
    t.add_argument("--data", required=True, type=_path, metavar="FILE.jsonl", help="preference pairs")
    t.add_argument("--model", metavar="DIR", type=_path,
                   help="π_ref checkpoint directory (default: the cached toy model)")
    t.add_argument("--preset", choices=presets,
                   help=f"toy model size ({demo_defaults.world.preset}; not with --model)")
    t.add_argument("--out", default="results/train", type=_path, help="output directory (%(default)s)")
    t.add_argument("--eval-fraction", type=_fraction, default=0.1, help="pairs held out for accuracy (%(default)s)")
    t.add_argument("--skip-invalid", action="store_true", help="skip bad rows (counted) instead of stopping")
    t.add_argument("--seed", type=_seed, default=0, help="seed (%(default)s)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_dpo_args(t, DPOConfig())


def check_model_flags(args) -> str:
    """--preset and --rebuild describe the toy π_ref, which --model replaces: refuse them together (else they would be
    ignored, and metrics.json would record a preset that was not used). Returns the toy preset to use."""
    if args.model:
        given = [flag for flag, value in (("--preset", args.preset), ("--rebuild", getattr(args, "rebuild", False)))
                 if value]
        if given:
            raise UsageError(f"{' and '.join(given)} set the toy π_ref, which --model {args.model} replaces; drop "
                             f"{' and '.join(given)}, or drop --model to use the toy model")
    from dpo_teach.pipeline import DemoConfig

    return args.preset or DemoConfig().world.preset


def check_out_replaceable(out: str, owned: frozenset[str], inputs: dict[str, str | None] | None = None,
                          what: str = "a run") -> None:
    """A run replaces --out as a whole at its end: refuse a directory that holds anything but what such a run writes
    (``owned``: ``pipeline.RUN_OUTPUTS`` for the demo, ``TRAIN_OUTPUTS`` for train), or that holds one of the run's
    own ``inputs`` (``{"--data": path, "--model": path}``)."""
    from dpo_teach.utils import check_replaceable

    try:
        check_replaceable(out, owned, what, inputs=inputs)
    except FileExistsError as e:
        raise UsageError(f"--out {e}") from None
    _check_room_beside(out)


def _check_room_beside(out: str) -> None:
    """A run is written into a temporary folder beside --out (``.NAME.PID.XXXXXXXX.tmp``, ``utils.atomic_dir``; beside
    the folder a link names) that takes its place at the end: its folder must be writable, that name short enough for
    the file system, and --out no mount point (which no rename can replace)."""
    target = Path(os.path.realpath(out))
    if os.path.ismount(target):
        raise UsageError(f"--out {out}: is a mount point, which a run cannot replace (it is written beside --out and "
                         "then takes its place); pass a folder inside it")
    beside = nearest_existing(target.parent)
    if not os.access(beside, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: the run is written beside it, in {beside}, and then takes its place, but "
                         f"{beside} is not writable for you; pass a path in a folder you can write to")
    _check_name_beside(target, f"--out {out}", "the run")


def _check_name_beside(target: Path, named: str, what: str) -> None:
    """``what`` is written beside ``target`` under a longer name (``.NAME.PID.XXXXXXXX.tmp``, ``utils.atomic_file``
    and ``atomic_dir``), then renamed to it: refuse a name too long for that before the work, not after."""
    beside = nearest_existing(target.parent)
    added, name = len(f"..{os.getpid()}.XXXXXXXX.tmp"), len(os.fsencode(target.name))
    longest = os.pathconf(beside, "PC_NAME_MAX") - added
    if name > longest:
        raise UsageError(f"{named}: its last part is {name} bytes long; {what} is written beside it under a name "
                         f"{added} bytes longer, which this file system refuses; pass a name of at most {longest} "
                         "bytes")


def check_context(model_dir: str | None, max_length: int, sample_tokens: int | None = None) -> tuple | None:
    """--max-length must fit the model's context: the toy model's (known without building it) or the checkpoint's.

    With ``sample_tokens`` (the demo samples completions of that many tokens after the grammar's prompts), the
    checkpoint's context must also hold the longest prompt plus that many tokens. Returns the checkpoint's
    ``(model, tokenizer)``, loaded here once for the whole command, or None for the toy model."""
    from dpo_teach.model import TOY_CONTEXT, ContextLengthError, check_max_length, context_length, load_checkpoint

    if model_dir is None:
        check_max_length(max_length, TOY_CONTEXT, "the toy model")
        return None
    model, tokenizer = load_checkpoint(model_dir)
    context = context_length(model)
    check_max_length(max_length, context, f"the checkpoint {model_dir}")
    if sample_tokens is not None and context is not None:
        from dpo_teach import grammar

        longest = max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in grammar.all_prompts())
        if longest + sample_tokens > context:
            raise ContextLengthError(f"the demo samples completions of up to {sample_tokens} tokens after prompts of "
                                     f"up to {longest} tokens, which needs a context of {longest + sample_tokens}, but "
                                     f"the checkpoint {model_dir} has {context} (n_positions); use a checkpoint with a "
                                     "longer context, or drop --model to use the toy model")
    return model, tokenizer


def warn_other_reference(data: str, world) -> None:
    """Warn (``DataWarning``) when ``data`` holds a demo run's pairs (its ``metrics.json`` beside it) sampled from
    another toy π_ref than ``world``, the one ``train`` measures them against: ``demo --seed 1`` builds a seed-1
    π_ref, ``train`` the seed-0 one. DPO's loss assumes the pairs' reference is π_ref."""
    import json
    import warnings
    from dataclasses import asdict

    from dpo_teach.preference_file import DataWarning
    from dpo_teach.world import WorldConfig, cache_entry, reference_cached

    try:
        metrics = json.loads((Path(data).parent / "metrics.json").read_text(encoding="utf-8"))
        sampled = WorldConfig(**metrics["config"]["world"])
    except (OSError, ValueError, KeyError, TypeError):  # not a demo run's pairs: nothing to compare
        return
    if sampled == world:
        return
    differ = ", ".join(f"{k} {v} (train: {getattr(world, k)})" for k, v in asdict(sampled).items()
                       if v != getattr(world, k))
    fix = (f"pass it with --model {cache_entry(sampled)}" if reference_cached(sampled) else
           f"rerun the demo with `--seed {world.seed}` for pairs of train's π_ref")
    warnings.warn(f"{data}: these pairs were sampled by a demo whose toy π_ref differs from the one train measures "
                  f"them against ({differ}); DPO's loss assumes the pairs' reference is π_ref: to train against the "
                  f"one that sampled them, {fix}", DataWarning, stacklevel=2)
