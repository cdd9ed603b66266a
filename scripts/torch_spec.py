"""Which torch build to install, and from where. The Makefile's bootstrap asks this script before it installs torch.

    python scripts/torch_spec.py [--build auto|cpu|cuda|default] [--torch "torch==2.13.0"]

prints the arguments for ``pip install`` on stdout (one line) and the reason on stderr. Run it with the Python of
the environment that gets torch (the Makefile uses ``.venv/bin/python``): the wheel depends on that Python.

``--build auto`` (the default) picks, in this order:

=========================================================  ========  ============================================
machine                                                    build     pip install ...
=========================================================  ========  ============================================
pip already has the torch it would install as a local      local     torch==2.13.0 (from disk, no download)
file (``--find-links``; the course's CI machines)
macOS on Apple silicon, macOS 14 or later                  default   torch==2.13.0 (PyPI's wheel; MPS)
macOS on an Intel Mac (or an x86_64 Python under Rosetta),  (none)   refused with what to do: PyPI has no such
or before macOS 14                                                   wheel (Intel: none after torch 2.2.2)
Linux or Windows with an NVIDIA GPU (``nvidia-smi -L``     cuda      torch==2.13.0 (PyPI's wheel: a CUDA build
works)                                                               on Linux, CPU-only on Windows)
Linux or Windows without one                               cpu       torch==2.13.0 --index-url PyTorch's CPU
                                                                     index --extra-index-url PyPI
... where that index is unreachable (only PyPI allowed)    default   torch==2.13.0 (PyPI's wheel)
=========================================================  ========  ============================================

The course never needs a GPU: the CPU build is the small download (PyPI's Linux x86_64 wheel alone is 527 MB and
pulls several GB of CUDA libraries). ``--build cpu|cuda|default`` skips the detection (``make demo TORCH_BUILD=cpu``).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import urllib.request

CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's own index of CPU-only wheels
PYPI = "https://pypi.org/simple"
BUILDS = ("auto", "cpu", "cuda", "default")
LOWEST_TORCH = "2.6"  # pyproject.toml's lower bound (tests/test_setup_torch.py holds them together)


class NoWheel(Exception):
    """PyPI has no torch wheel for this machine: the message says why and what to do instead."""


def mac_wheel_missing(machine: str, release: str) -> str | None:
    """Why PyPI's torch 2.13.0 wheel cannot install on this Mac (``platform.machine()``, ``platform.mac_ver()[0]``),
    or None. Its only macOS wheel is ``macosx_14_0_arm64``; PyTorch's last Intel-Mac wheel was 2.2.2, and the course
    needs torch 2.6 or later (``LOWEST_TORCH``)."""
    if machine != "arm64":
        return (f"this Python runs on {machine or 'an unknown CPU'} (an Intel Mac, or an x86_64 Python under Rosetta), "
                "and PyTorch has published no macOS wheel for it since torch 2.2.2 (the course needs "
                f"{LOWEST_TORCH} or later). On an Apple-silicon Mac use an arm64 Python; on an Intel Mac run the "
                "course in a Linux container or virtual machine, or on another computer")
    major = int(release.split(".")[0]) if release.split(".")[0].isdigit() else None
    if major is not None and major < 14:
        return (f"torch's macOS wheel needs macOS 14 or later, and this is macOS {release}: update macOS, or run the "
                "course in a Linux container or virtual machine")
    return None


def has_nvidia_gpu() -> bool:
    """True when ``nvidia-smi`` is on PATH and lists at least one GPU (a driver is installed and sees it)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def pip_has_local_file(torch: str, python: str = sys.executable) -> bool:
    """True when pip would install ``torch`` without an index, i.e. from a local file it is configured with.

    A dry run with ``--no-index`` reads only ``--find-links`` locations (pip.conf, $PIP_FIND_LINKS): it downloads
    nothing and fails at once where there is no such file, or none for this Python.
    """
    cmd = [python, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index", "--quiet", torch]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def reachable(url: str = CPU_INDEX, timeout: float = 10) -> bool:
    """True when PyTorch's CPU index answers (a firewall or an offline mirror may allow PyPI only)."""
    try:
        with urllib.request.urlopen(f"{url}/torch/", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def choose(build: str, torch: str, system: str | None = None, local: bool | None = None,
           gpu: bool | None = None, cpu_index: bool | None = None,
           mac: tuple[str, str] | None = None) -> tuple[str, list[str], str]:
    """``(build, pip arguments, reason)`` for ``build`` in ``BUILDS``; the detections run only when needed.

    ``system`` (``platform.system()``), ``local`` (:func:`pip_has_local_file`), ``gpu`` (:func:`has_nvidia_gpu`),
    ``cpu_index`` (:func:`reachable`) and ``mac`` (``(platform.machine(), platform.mac_ver()[0])``) can be given, as
    the tests do; ``None`` means detect.

    Raises:
        NoWheel: ``auto`` on a Mac that PyPI has no wheel for (:func:`mac_wheel_missing`).
    """
    if build not in BUILDS:
        raise ValueError(f"unknown torch build {build!r}; choose one of {', '.join(BUILDS)}")
    cpu_args = [torch, "--index-url", CPU_INDEX, "--extra-index-url", PYPI]
    if build == "cpu":
        return "cpu", cpu_args, "asked for (TORCH_BUILD=cpu): PyTorch's CPU-only wheel"
    if build in ("cuda", "default"):
        return build, [torch], f"asked for (TORCH_BUILD={build}): PyPI's standard wheel"
    if local if local is not None else pip_has_local_file(torch):
        return "local", [torch], "pip has this torch as a local file: nothing to download"
    system = system or platform.system()
    if system == "Darwin":
        why_not = mac_wheel_missing(*(mac or (platform.machine(), platform.mac_ver()[0])))
        if why_not:
            raise NoWheel(why_not)
        return "default", [torch], "macOS: PyPI's standard wheel (CPU, and MPS on Apple silicon)"
    if gpu if gpu is not None else has_nvidia_gpu():
        return "cuda", [torch], f"{system} with an NVIDIA GPU (nvidia-smi): PyPI's standard wheel"
    if not (cpu_index if cpu_index is not None else reachable()):
        return "default", [torch], (f"{system} without an NVIDIA GPU, but PyTorch's CPU index is unreachable from "
                                    "here: PyPI's standard wheel (on Linux a CUDA build, 2.7 GB with its libraries)")
    return "cpu", cpu_args, f"{system} without an NVIDIA GPU: PyTorch's CPU-only wheel, much smaller"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="auto", help=f"one of {', '.join(BUILDS)} (default: auto)")
    parser.add_argument("--torch", default="torch==2.13.0", help="the requirement to install (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        build, pip_args, reason = choose(args.build.strip().lower() or "auto", args.torch)
    except ValueError as e:
        parser.error(str(e))
    except NoWheel as e:
        print(f"torch: cannot install here: {e}. (TORCH_BUILD=default makes pip try anyway.)", file=sys.stderr)
        return 1
    print(f"torch: {build} build, {reason}. Override: TORCH_BUILD=cpu|cuda|default", file=sys.stderr)
    print(" ".join(pip_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
