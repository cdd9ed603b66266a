"""``python -m dpo_teach.grading assign|release`` (``make assign``, ``make release``); ``_run``: one notebook's grading
process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpo_teach.grading.assign import AUTOGRADER, MASTERS, ROOT, assign


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_teach.grading")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assign", help="masters → student notebooks, autograder bundles and manifests")
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
    if args.command == "assign":
        for name in assign():
            print(f"{MASTERS.relative_to(ROOT)}/{name}.ipynb → notebooks/{name}.ipynb, "
                  f"{AUTOGRADER.relative_to(ROOT)}/{name}.zip")
    elif args.command == "release":
        from dpo_teach.grading.release import LeakError, release

        try:
            files = release(Path(args.out))
        except LeakError as e:
            print(f"make release: error: {e}; nothing was written", file=sys.stderr)
            return 1
        print(f"wrote the student release ({len(files)} files) to {args.out}")
    elif args.command == "gradescope":
        from dpo_teach.grading import gradescope

        if args.out:
            for path in gradescope.build(Path(args.out)):
                print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        else:
            report = gradescope.run(Path(args.source), Path(args.submission), Path(args.results))
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
