"""``python -m dpo_teach.grading assign [--solutions DIR]|release|gradescope`` (``make assign``, ``make release``,
``make gradescope``); ``_run`` and ``_zygote``: a notebook's grading process. Where the instructor's folders are
missing (the student release), ``assign`` and ``gradescope`` say so and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_teach.grading.assign import AUTOGRADER, MASTERS, NOTEBOOKS, ROOT, assign

PROG = "python -m dpo_teach.grading"


def _missing(folder: Path, pattern: str, what: str) -> str | None:
    """Why an instructor's command cannot run here (``folder`` has no ``pattern``), or None. The student release
    has neither the masters nor the bundles: the message says where they are."""
    if any(Path(folder).glob(pattern)):
        return None
    return (f"no {what} in {folder} ({pattern}): this copy of the course has none (the student release leaves them "
            "out); they are in the instructor's full repository of the course")


def _solutions_problem(solutions: str) -> str | None:
    """Why ``assign --solutions`` cannot write the answer keys there (the flag and what to pass named), or None:
    before any master is assigned. In the masters' folder they would replace the masters (their tests and markers
    lost); in notebooks/ the student notebooks (the answers handed out); beside the bundles, they would be graded."""
    from dpo_teach.cli_args import UsageError, check_writable

    target = Path(solutions).resolve()
    for folder, what in ((MASTERS, "the masters, which the answer keys would replace (their tests lost)"),
                         (NOTEBOOKS, "the student notebooks, which the answer keys would replace"),
                         (AUTOGRADER, "the autograder bundles")):
        if target == folder.resolve() or folder.resolve() in target.parents:
            return (f"--solutions {solutions}: is or lies in {folder.relative_to(ROOT)}, the folder of {what}; pass "
                    "a folder of their own, e.g. results/solutions")
    try:
        check_writable(solutions, "--solutions", directory=True)
    except UsageError as e:
        return str(e)
    return None


def _gradescope_problem(args) -> str | None:
    """Why ``gradescope`` cannot run with these paths (each named, with what to pass), or None."""
    if args.out:
        if Path(args.out).exists() and not Path(args.out).is_dir():
            return f"--out {args.out}: is a file, expected a folder; pass another path"
        return _missing(AUTOGRADER, "*.json", "autograder bundles (`make assign` writes them from the masters)")
    if not (args.source and args.submission and args.results):
        return ("pass --out DIR to build the bundles, or --source, --submission and --results together to grade "
                "one submission (what a bundle's run_autograder does)")
    from dpo_teach.grading.manifests import load_manifests

    try:
        found = len(load_manifests(Path(args.source, "autograder")))  # the rule the grading reads them by
    except (OSError, ValueError) as e:
        found = f"none usable ({e})"
    if found != 1:
        return (f"--source {args.source}: expected one assignment's manifest and bundle in "
                f"{Path(args.source, 'autograder')}, found {found}; pass the folder of one bundle that "
                "`make gradescope` built, unpacked")
    if not Path(args.submission).is_dir():
        return f"--submission {args.submission}: not a folder; pass the folder that holds the submitted notebook"
    if Path(args.results).is_dir():
        return f"--results {args.results}: is a folder; pass the path of the results.json to write"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assign", help="masters → student notebooks, autograder bundles and manifests").add_argument(
        "--solutions", metavar="DIR", help="also write the solution notebooks there: grade them first, they must "
                                           "score in full")
    sub.add_parser("release", help="the student-only tree: notebooks, package, README; no masters, bundles or "
                                   "tests").add_argument("--out", default="results/release/dpo-teach",
                                                         help="folder to write (replaced) (%(default)s)")
    g = sub.add_parser("gradescope", help="build Gradescope bundles (--out), or grade one submission in one "
                                          "(--source/--submission/--results, what its run_autograder calls)")
    g.add_argument("--out", help="folder to write one bundle per assignment to")
    g.add_argument("--source", help="the unpacked bundle")
    g.add_argument("--submission", help="the folder holding the submitted notebook")
    g.add_argument("--results", help="results.json to write")
    sub.add_parser("_run", help="(internal) run one submitted notebook for dpo-teach grade")
    sub.add_parser("_zygote", help="(internal) start each notebook's process warm").add_argument("fd", type=int)
    args = parser.parse_args(argv)
    problem = None
    if args.command == "assign":
        problem = _missing(MASTERS, "*.ipynb", "master notebooks") or (args.solutions and
                                                                        _solutions_problem(args.solutions))
    elif args.command == "gradescope":
        problem = _gradescope_problem(args)
    if problem:
        print(f"{PROG} {args.command}: error: {problem}", file=sys.stderr)
        return 2
    if args.command == "assign":
        for name in assign(solutions=Path(args.solutions) if args.solutions else None):
            print(f"{MASTERS.relative_to(ROOT)}/{name}.ipynb → notebooks/{name}.ipynb, "
                  f"{AUTOGRADER.relative_to(ROOT)}/{name}.zip"
                  + (f", {Path(args.solutions) / name}.ipynb (solutions)" if args.solutions else ""))
    elif args.command == "release":
        from dpo_teach.grading.release import LeakError, OutError, release

        try:
            files = release(Path(args.out))
        except OutError as e:
            print(f"make release: error: {e}; nothing was written", file=sys.stderr)
            return 2
        except LeakError as e:
            print(f"make release: error: {e}; nothing was written", file=sys.stderr)
            return 1
        print(f"wrote the student release ({len(files)} files) to {args.out}")
    elif args.command == "gradescope":
        from dpo_teach.grading import gradescope

        if args.out:
            try:
                built = gradescope.build(Path(args.out))
            except (gradescope.CacheUnusable, OSError) as e:  # OSError: a full disk, a folder in a bundle's place
                print(f"make gradescope: error: {e}", file=sys.stderr)
                return 2
            for path in built:
                print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        else:
            try:
                report = gradescope.run(Path(args.source), Path(args.submission), Path(args.results))
            except gradescope.GraderFailed as e:
                print(f"gradescope: error: the grader failed on this submission, not the student's notebook ({e}); "
                      "no results.json was written, so Gradescope reports that the autograder failed: fix the cause "
                      "(the bundle's set-up, the container) and regrade the submission", file=sys.stderr)
                return 1
            print(f"score {report['score']:g}: {report['output']}")
    elif args.command == "_zygote":
        from dpo_teach.grading.zygote import serve

        return serve(args.fd)
    else:
        from dpo_teach.grading.runner import main as run_one

        return run_one()
    return 0


if __name__ == "__main__":
    sys.exit(main())
