"""dpo_teach.setup_check: notebook 00's first-run table (issue 14)."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import pytest
import torch

from dpo_teach import setup_check
from dpo_teach.setup_check import REFERENCE, setup_report


def test_the_table_has_what_a_student_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path / "cache"))
    report = setup_report(probe_s=REFERENCE["probe_s"])  # as fast as the course's machine
    whats = [what for what, _ in report.rows]
    assert whats == ["Python", "packages", "torch", "threads", "cache (π_ref)", "π_ref cached", "speed",
                     "first notebook", "first GPT-2 run"]
    assert report["Python"].startswith(platform.python_version()) and "(supported)" in report["Python"]
    assert report["torch"].startswith(torch.__version__)
    assert report["packages"] == "as the course needs"  # this suite's own environment, installed by `make test`
    assert report["cache (π_ref)"] == str(tmp_path / "cache")  # writable: nothing more said
    (tmp_path / "a_file").write_text("x")  # a cache that cannot be made (a file in its place): said in the table,
    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path / "a_file" / "cache"))  # as load_reference warns
    assert "(not writable: set DPO_TEACH_CACHE)" in setup_report(probe_s=1.0)["cache (π_ref)"]
    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path / "cache"))
    assert report["π_ref cached"].startswith("no")  # an empty cache: the build time is added
    assert report["speed"].startswith("1.00×")
    assert report["first notebook"] == f"01: about {REFERENCE['notebook_01_s']:.0f} s (estimate)"
    assert "once to build π_ref" in report["first GPT-2 run"]
    text, table = str(report), report._repr_markdown_()
    assert all(what in text and f"| {what} |" in table for what in whats)


def test_estimates_scale_with_the_probe_and_drop_the_build_once_cached(tmp_path, monkeypatch):
    from dpo_teach.world import WorldConfig, cache_entry

    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path))
    entry = cache_entry(WorldConfig(preset="tiny"))
    assert entry.parent == tmp_path
    entry.mkdir()
    (entry / "world.json").write_text("{}")
    assert setup_check.reference_cached()
    report = setup_report(probe_s=3 * REFERENCE["probe_s"])  # a machine 3× slower
    assert report["π_ref cached"] == "yes" and "build" not in report["first GPT-2 run"]
    assert report["speed"].startswith("0.33×")
    assert report["first GPT-2 run"] == f"04: about {3 * REFERENCE['notebook_04_s']:.0f} s (estimate)"  # under 90 s


@pytest.mark.parametrize("cuda, available, mps, expected", [
    (None, False, False, "CPU"),
    (None, False, True, "MPS (Apple GPU) and CPU"),
    ("12.4", True, False, "CUDA 12.4 (Fake GPU)"),
    ("12.4", False, False, "CUDA 12.4 build, no GPU visible"),
])
def test_torch_build_names_cpu_cuda_and_mps(monkeypatch, cuda, available, mps, expected):
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    monkeypatch.setattr(torch.backends, "mps", SimpleNamespace(is_available=lambda: mps))
    assert setup_check.torch_build().startswith(expected)


def test_speed_probe_is_short_and_leaves_the_threads_alone():
    threads = torch.get_num_threads()
    assert 0 < setup_check.speed_probe(repeats=1) < 5
    assert torch.get_num_threads() == threads


def test_an_unsupported_python_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DPO_TEACH_CACHE", str(tmp_path))
    monkeypatch.setattr(setup_check, "SUPPORTED_PYTHONS", ((3, 99),))
    assert "3.11, 3.12, 3.13" in setup_report(probe_s=1.0)["Python"]


def test_packages_below_what_the_course_needs_are_named_with_the_fix(monkeypatch):
    """transformers 5.0 to 5.14 build another π_ref (GPT-2's residual scale skipped) and every number differs: a
    student whose environment kept such a version (or lacks a package) reads which, and what to run."""
    from importlib import metadata

    real = metadata.version

    def version(name):
        if name == "tqdm":
            raise metadata.PackageNotFoundError(name)
        return "5.0.0" if name == "transformers" else real(name)

    monkeypatch.setattr(metadata, "version", version)
    assert setup_check.unmet_requirements() == ["transformers 5.0.0 (needs >=5.15)", "tqdm missing"]
    row = setup_report(probe_s=1.0)["packages"]
    assert row.startswith("not as the course needs: transformers 5.0.0 (needs >=5.15), tqdm missing;"), row
    assert "`make lab`" in row and "`pip install -e .`" in row
    assert setup_check.unmet_requirements("a-distribution-that-is-not-installed") == []
    # a clone pulled after its `pip install -e .`: the saved metadata still says transformers>=5.0, pyproject.toml
    # says more, and the clone's word counts
    monkeypatch.setattr(metadata, "requires", lambda name: ["transformers>=5.0"])
    assert "transformers 5.0.0 (needs >=5.15)" in setup_check.unmet_requirements()


def test_notebook_00s_version_table_asks_what_the_package_requires():
    """Notebook 00's environment check said "ok" for transformers 5.10 (its table asked ≥ 5.0), and the set-up table
    one cell below named the same package as below what the course needs (≥ 5.15, pyproject.toml)."""
    import ast
    import json

    from packaging.requirements import Requirement

    from dpo_teach.grading import MASTERS, NOTEBOOKS

    bounds = {}
    for line in setup_check.requirements():
        requirement = Requirement(line)
        bounds[requirement.name.lower()] = {s.version for s in requirement.specifier if s.operator == ">="}
    for notebook in (MASTERS / "00_start_here.ipynb", NOTEBOOKS / "00_start_here.ipynb"):
        cells = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        (source,) = [s for s in cells if "NEEDED = {" in s]
        (assignment,) = [n for n in ast.parse(source).body if isinstance(n, ast.Assign) and n.targets[0].id == "NEEDED"]
        table = ast.literal_eval(assignment.value)
        checked = {dist.lower(): minimum for dist, minimum in table.values() if dist.lower() in bounds}
        assert len(checked) >= 7, checked  # torch, transformers, tokenizers, numpy, matplotlib, ipywidgets, ...
        for dist, minimum in checked.items():
            assert bounds[dist] == {minimum}, f"{notebook.name}: {dist} ≥ {minimum}, pyproject.toml asks {bounds[dist]}"
