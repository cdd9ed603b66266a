"""``python -m dpo_teach.grading assign`` (what ``make assign`` runs); ``_worker`` is the grading process."""

from __future__ import annotations

import argparse
import sys

from dpo_teach.grading.assign import AUTOGRADER, MASTERS, ROOT, assign
from dpo_teach.grading.worker import _worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo_teach.grading")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("assign", help="masters → student notebooks, autograder bundles and manifests")
    sub.add_parser("_worker").add_argument("cell_timeout", type=int)
    args = parser.parse_args(argv)
    if args.command == "assign":
        for name in assign():
            print(f"{MASTERS.relative_to(ROOT)}/{name}.ipynb → notebooks/{name}.ipynb, "
                  f"{AUTOGRADER.relative_to(ROOT)}/{name}.zip")
    else:
        _worker(args.cell_timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
