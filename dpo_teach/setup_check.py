"""The first-run check of notebook 00: what a student needs to know about this machine, in one table.

    from dpo_teach.setup_check import setup_report; setup_report()

shows Python, whether the installed packages are the versions the course needs, the torch build (CPU, CUDA or
MPS), the threads torch uses, where π_ref is cached and whether it is already built, and how long the first
notebooks will take here. The times are estimates: the course's measured times
(``REFERENCE``, a 2-core machine) scaled by how fast a small fixed torch workload (``speed_probe``) runs here.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_teach.utils import torch_threads
from dpo_teach.world import cache_dir, cache_problem, reference_cached

SUPPORTED_PYTHONS = ((3, 11), (3, 12), (3, 13))

# Measured on the course's machine (2 cores, torch 2.13.0 CPU, load average about 2, 2026-12-03): each notebook in
# full mode in a fresh kernel (05 and 07: README, `make bench-notebooks`).
REFERENCE = {
    "probe_s": 0.085,  # speed_probe()
    "notebook_01_s": 6.0,  # the first exercises: the bandit world, no π_ref needed
    # the first GPT-2 training: 04 (05: 42 s, 07: 77 s; 04 measured beside 05 on 2026-12-04, 24.1 s and 35.0 s, and
    # scaled by 42 / 35 to the load of the others)
    "notebook_04_s": 29.0,
    "build_reference_s": 14.6,  # π_ref ("tiny"), built once by the first notebook that needs it (04, 05 or 07)
}


@dataclass
class SetupReport:
    """``rows``: ``(what, value)`` pairs. Shown as a table in a notebook, as aligned text by ``print``."""

    rows: list[tuple[str, str]]

    def __str__(self) -> str:
        width = max(len(what) for what, _ in self.rows)
        return "\n".join(f"{what:<{width}}  {value}" for what, value in self.rows)

    def _repr_markdown_(self) -> str:
        return "| | this machine |\n|---|---|\n" + "\n".join(f"| {what} | {value} |" for what, value in self.rows)

    def __getitem__(self, what: str) -> str:
        return dict(self.rows)[what]


def torch_build() -> str:
    """Which torch this is and what it can use: ``"CUDA 12.4 (NVIDIA ...)"``, ``"MPS (Apple GPU)"`` or ``"CPU"``."""
    if torch.version.cuda is not None:
        if torch.cuda.is_available():
            return f"CUDA {torch.version.cuda} ({torch.cuda.get_device_name(0)})"
        return f"CUDA {torch.version.cuda} build, no GPU visible: runs on the CPU (a CPU-only build is smaller)"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "MPS (Apple GPU) and CPU"
    return "CPU"


def speed_probe(repeats: int = 3) -> float:
    """Seconds for a fixed small workload (a 2-layer MLP forward and backward, one thread), best of ``repeats``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=generator)  # (B, C)
    w1 = torch.randn(64, 256, generator=generator, requires_grad=True)
    w2 = torch.randn(256, 64, generator=generator, requires_grad=True)
    best = float("inf")
    with torch_threads(1):  # as the notebooks run
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(200):
                loss = (torch.relu(x @ w1) @ w2).square().mean()  # (B, 256) → (B, C) → ()
                loss.backward()
            best = min(best, time.perf_counter() - start)
    return best


def _seconds(s: float) -> str:
    return f"about {s:.0f} s" if s < 90 else f"about {s / 60:.1f} min"


def requirements(distribution: str = "dpo-teach") -> list[str]:
    """``distribution``'s own requirements: for this course run from a clone, its ``pyproject.toml`` (an editable
    install's saved metadata is as old as the last ``pip install -e .``, and a ``git pull`` may have raised a bound
    since); else the installed metadata. Raises ``importlib.metadata.PackageNotFoundError`` when neither has them."""
    import tomllib
    from importlib import metadata

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        if project["name"] == distribution:
            return list(project["dependencies"])
    except (OSError, ValueError, KeyError, TypeError):  # no clone around the package (a wheel), or not ours
        pass
    return metadata.requires(distribution) or []


def unmet_requirements(distribution: str = "dpo-teach") -> list[str]:
    """What this environment lacks of ``distribution``'s own requirements (:func:`requirements`, extras aside):
    ``"transformers 5.0.0 (needs >=5.15)"``, ``"tqdm missing"``. Empty when all are met, or when neither a clone nor
    an install says what they are (there is nothing to compare with)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        required = requirements(distribution)
    except metadata.PackageNotFoundError:
        return []
    unmet = []
    for line in required:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra's (dev, peers) or another platform's
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{requirement.name} missing")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement.name} {version} (needs {requirement.specifier})")
    return unmet


def setup_report(probe_s: float | None = None) -> SetupReport:
    """The table; ``probe_s`` (seconds of :func:`speed_probe`) is measured when not given."""
    py = sys.version_info[:2]
    supported = "supported" if py in SUPPORTED_PYTHONS else "not tested: the course supports 3.11, 3.12, 3.13"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cache = cache_dir()
    writable = cache_problem(cache) is None
    cached = reference_cached()
    probe_s = speed_probe() if probe_s is None else probe_s
    slower = probe_s / REFERENCE["probe_s"]
    build = "" if cached else f", + {_seconds(REFERENCE['build_reference_s'] * slower)} once to build π_ref"
    unmet = unmet_requirements()
    rows = [
        ("Python", f"{platform.python_version()} ({supported})"),
        ("packages", "as the course needs" if not unmet else
         f"not as the course needs: {', '.join(unmet)}; run `make lab` in the course folder (it installs them), or "
         "`pip install -e .` there, then restart the kernel"),
        ("torch", f"{torch.__version__}: {torch_build()}"),
        ("threads", f"torch uses {torch.get_num_threads()} of {cores} cores (notebooks set 1 for the tiny models)"),
        ("cache (π_ref)", f"{cache}{'' if writable else ' (not writable: set DPO_TEACH_CACHE)'}"),
        ("π_ref cached", "yes" if cached else "no: the first notebook that needs it builds it once"),
        ("speed", f"{1 / slower:.2f}× the course's 2-core machine"),
        ("first notebook", f"01: {_seconds(REFERENCE['notebook_01_s'] * slower)} (estimate)"),
        ("first GPT-2 run", f"04: {_seconds(REFERENCE['notebook_04_s'] * slower)} (estimate){build}"),
    ]
    return SetupReport(rows)


if __name__ == "__main__":  # python -m dpo_teach.setup_check: the same table in a terminal
    print(setup_report())
