"""Write requirements.lock: the exact versions installed in this environment of everything dpo-teach[dev,peers]
needs, torch excepted (the Makefile picks torch's build and index: scripts/torch_spec.py).

    .venv/bin/python scripts/lock.py [--out requirements.lock]     # what `make lock` runs

Unlike ``pip freeze``, only the project's dependency closure is written (nothing that was installed by hand), read
from the installed packages' own metadata, with environment markers evaluated for this Python and platform.
"""

from __future__ import annotations

import argparse
import platform
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT, EXTRAS = "dpo-teach", ("dev", "peers")
LEFT_TO_THE_MAKEFILE = {"torch", PROJECT}


def closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """``{name: installed version}`` of every distribution that ``project[extras]`` needs here, itself included."""
    found: dict[str, str] = {}
    done: set[tuple[str, str]] = set()  # (package, extra) pairs already followed; "" is the package itself
    todo = [(project, extra) for extra in ("", *extras)]
    while todo:
        name, extra = todo.pop()
        try:
            dist = distribution(name)
        except PackageNotFoundError as e:
            raise SystemExit(f"{name} is required but not installed: run `make` first ({e})") from None
        key = canonicalize_name(dist.metadata["Name"])
        if (key, extra) in done:
            continue
        done.add((key, extra))
        found[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None and extra == "" or req.marker is not None and req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ("", *req.extras)]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="requirements.lock")
    args = parser.parse_args(argv)
    pins = {k: v for k, v in closure().items() if k not in LEFT_TO_THE_MAKEFILE}
    head = (f"# {len(pins)} packages that dpo-teach[dev,peers] needs, as installed and tested on CPython "
            f"{platform.python_version()}, {platform.system()} {platform.machine()}.\n"
            "# Written by `make lock` (scripts/lock.py); torch is installed by the Makefile (scripts/torch_spec.py).\n"
            "# Install: `make .venv/.installed LOCKED=1` (or pip install -r requirements.lock; pip install -e .)\n")
    Path(args.out).write_text(head + "".join(f"{k}=={v}\n" for k, v in sorted(pins.items())), encoding="utf-8")
    print(f"wrote {args.out}: {len(pins)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
