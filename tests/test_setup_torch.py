"""scripts/torch_spec.py, the Makefile's choice of torch build: each platform simulated, the override, and the
bootstrap recipe that uses it (issue 14: a laptop without a GPU must not download the CUDA build)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "torch_spec.py"
TORCH = "torch==2.13.0"
CPU = [TORCH, "--index-url", "https://download.pytorch.org/whl/cpu", "--extra-index-url", "https://pypi.org/simple"]


@pytest.fixture(scope="module")
def spec(load_script):
    return load_script("torch_spec")


@pytest.mark.parametrize("system, gpu, build, args", [
    ("Darwin", False, "default", [TORCH]),  # macOS: PyPI's wheel (CPU + MPS)
    ("Darwin", True, "default", [TORCH]),
    ("Linux", True, "cuda", [TORCH]),  # an NVIDIA GPU: PyPI's standard (CUDA) wheel
    ("Windows", True, "cuda", [TORCH]),
    ("Linux", False, "cpu", CPU),  # no GPU: the CPU-only index, PyPI for everything else
    ("Windows", False, "cpu", CPU),
])
def test_auto_picks_by_platform_and_gpu(spec, system, gpu, build, args):
    chosen = spec.choose("auto", TORCH, system=system, local=False, gpu=gpu, cpu_index=True, mac=("arm64", "14.5"))
    assert chosen[:2] == (build, args)


@pytest.mark.parametrize("mac, says", [
    (("x86_64", "13.6"), "Intel Mac"),  # PyPI's last Intel-Mac torch is 2.2.2
    (("x86_64", "15.1"), "Rosetta"),  # an x86_64 Python on Apple silicon gets no arm64 wheel either
    (("arm64", "13.6"), "macOS 14 or later"),  # torch 2.13.0's one macOS wheel: macosx_14_0_arm64
])
def test_a_mac_pypi_has_no_wheel_for_is_told_what_to_do(spec, monkeypatch, capsys, mac, says):
    with pytest.raises(spec.NoWheel, match=says):
        spec.choose("auto", TORCH, system="Darwin", local=False, mac=mac)
    monkeypatch.setattr(spec, "pip_has_local_file", lambda torch: False)
    monkeypatch.setattr(spec.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(spec.platform, "machine", lambda: mac[0])
    monkeypatch.setattr(spec.platform, "mac_ver", lambda: (mac[1], ("", "", ""), mac[0]))
    assert spec.main([]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("torch: cannot install here: ") and "Linux container" in out.err


def test_without_pytorchs_index_auto_falls_back_to_pypi(spec):
    """A network that allows PyPI only (these machines, for Python 3.12/3.13): the install must still work."""
    build, args, reason = spec.choose("auto", TORCH, system="Linux", local=False, gpu=False, cpu_index=False)
    assert (build, args) == ("default", [TORCH]) and "unreachable" in reason


@pytest.mark.parametrize("system", ["Linux", "Darwin", "Windows"])
def test_a_local_file_wins_over_the_platform(spec, system):
    """These machines: pip serves torch 2.13.0 (CPU) from disk, so the plain requirement downloads nothing."""
    assert spec.choose("auto", TORCH, system=system, local=True, gpu=False)[:2] == ("local", [TORCH])


@pytest.mark.parametrize("build, args", [("cpu", CPU), ("cuda", [TORCH]), ("default", [TORCH])])
def test_the_override_skips_every_detection(spec, monkeypatch, build, args):
    def refuse(*a, **k):
        raise AssertionError("an explicit build must not detect anything")

    monkeypatch.setattr(spec, "pip_has_local_file", refuse)
    monkeypatch.setattr(spec, "has_nvidia_gpu", refuse)
    monkeypatch.setattr(spec, "reachable", refuse)
    monkeypatch.setattr(spec.platform, "system", refuse)
    assert spec.choose(build, TORCH)[:2] == (build, args)


def test_an_unknown_build_is_refused(spec, capsys):
    with pytest.raises(ValueError, match="auto, cpu, cuda, default"):
        spec.choose("rocm", TORCH)
    with pytest.raises(SystemExit):
        spec.main(["--build", "rocm"])
    assert "unknown torch build 'rocm'" in capsys.readouterr().err


def test_auto_detects_a_linux_laptop_without_cuda(spec, monkeypatch):
    """The whole detection with the machine simulated: Linux, no local torch file, no nvidia-smi on PATH."""
    monkeypatch.setattr(spec.platform, "system", lambda: "Linux")
    monkeypatch.setattr(spec.shutil, "which", lambda name: None)
    monkeypatch.setattr(spec.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1, b"", b""))
    monkeypatch.setattr(spec, "reachable", lambda: True)
    assert spec.choose("auto", TORCH)[:2] == ("cpu", CPU)


@pytest.mark.parametrize("returncode, stdout, found", [
    (0, "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1234)\n", True),
    (9, "", False),  # nvidia-smi installed, no driver: "couldn't communicate with the NVIDIA driver"
    (0, "No devices found.\n", False),
])
def test_nvidia_smi_must_list_a_gpu(spec, monkeypatch, returncode, stdout, found):
    monkeypatch.setattr(spec.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout, "")

    monkeypatch.setattr(spec.subprocess, "run", run)
    assert spec.has_nvidia_gpu() is found
    assert calls == [["/usr/bin/nvidia-smi", "-L"]]


def test_the_local_check_downloads_nothing(spec, monkeypatch):
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(spec.subprocess, "run", run)
    assert spec.pip_has_local_file(TORCH, python="py")
    (cmd,) = calls
    assert cmd[:4] == ["py", "-m", "pip", "install"] and {"--dry-run", "--no-index", "--no-deps"} <= set(cmd)
    monkeypatch.setattr(spec.subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(cmd, 1))
    assert not spec.pip_has_local_file(TORCH, python="py")


def test_main_prints_pip_arguments_and_the_reason(capsys):
    out = subprocess.run([sys.executable, str(SCRIPT), "--build", "cpu", "--torch", TORCH],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == CPU
    assert "cpu build" in out.stderr and "TORCH_BUILD" in out.stderr


def make_bootstrap(tmp_path: Path, *variables: str) -> list[str]:
    """The commands ``make`` would run to create a new venv at ``tmp_path/venv`` (``make -n``: nothing runs)."""
    venv = tmp_path / "venv"
    out = subprocess.run(["make", "-n", "-B", f"{venv}/.installed", f"VENV={venv}", *variables], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return out.stdout.replace("\\\n", " ").splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("variables, expected", [
    ((), None),  # auto: whatever this machine is (on the course's machines: the local file)
    (("TORCH_BUILD=cpu",), CPU),
    (("TORCH_BUILD=cuda",), [TORCH]),
    (("TORCH_BUILD=cpu", "TORCH=torch==2.9.1"), ["torch==2.9.1", *CPU[1:]]),
])
def test_the_makefile_installs_what_the_script_picks(tmp_path, spec, variables, expected):
    """The bootstrap's torch line, run by the shell as make would run it, with ``echo`` in place of pip."""
    venv = tmp_path / "venv"
    (line,) = [s for s in make_bootstrap(tmp_path, *variables) if "torch_spec.py" in s]
    assert "scripts/pip_install.py" in line  # pip install, through uv where it can (tests/test_pip_install.py)
    line = line.replace(f"{venv}/bin/python scripts/pip_install.py --quiet", "echo PIP").replace(
        f"{venv}/bin/python", sys.executable)
    out = subprocess.run(["sh", "-c", line], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("PIP ")
    if expected is None:
        expected = spec.choose("auto", TORCH)[1]
    assert out.stdout.split()[1:] == expected


def test_the_lowest_torch_a_message_names_is_pyprojects(spec):
    """The Intel-Mac message said the course needs torch 2.4 or later while pyproject.toml asks for 2.6."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (bound,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    assert bound == f"torch>={spec.LOWEST_TORCH}", bound
    assert f"the course needs {spec.LOWEST_TORCH} or later" in spec.mac_wheel_missing("x86_64", "13.6")
