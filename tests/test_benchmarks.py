"""Smoke tests of the benchmark helpers (the benchmarks themselves run with ``make bench``, not in the suite)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_demo import lookup  # noqa: E402
from bench_test_suite import clean_env, parse_pytest, ratios, same_tests  # noqa: E402
from common import summary, window_rates  # noqa: E402
from run_all import table, targets  # noqa: E402


def test_window_rates_count_whole_steps_after_warmup():
    stamps = [0.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0]  # steps 0-2 slow (warm-up), then 0.5 s per step
    assert window_rates(stamps, warmup=3, window=2, items_per_step=32) == [64.0, 64.0]
    assert window_rates(stamps, warmup=3, window=5, items_per_step=32) == []  # a partial window is not counted


def test_summary_and_lookup():
    s = summary([0.5, None, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["min"] == 0.5 and s["max"] == 0.7
    assert summary([None])["mean"] is None
    assert lookup({"policy": {"kl": 1.5}}, "policy.kl") == 1.5


def test_targets_and_table():
    result = {"dpo_pairs_per_s": 1500.0, "trl_pairs_per_s": 1000.0, "speedup_vs_trl": 1.5,
              "dpo_step_over_sft_step": 1.2, "demo_wall_s_build": 60.0,
              "reward_gain": summary([0.5, 0.45, 0.39])}
    checks = targets(result)
    assert checks["speedup_vs_trl"]["met"] and checks["demo_wall_s_build"]["met"]
    assert not checks["dpo_step_over_sft_step"]["met"]
    assert not checks["reward_gain (min over seeds)"]["met"]  # judged on the worst seed
    assert "demo_wall_s_cached" not in checks  # not measured, not judged
    result["targets"] = checks
    text = table(result)
    assert "1.50" in text and "targets missed: dpo_step_over_sft_step, reward_gain" in text


def test_parse_pytest_reads_the_summary_and_the_slowest_tests():
    output = """ruff check dpo_teach tests benchmarks
All checks passed!
........................................................................ [ 50%]
============================= slowest 3 durations ==============================
130.31s setup    tests/test_notebooks_00_04.py::test_student_notebook_runs_headless[00_start_here]
28.46s call     tests/test_compare.py::test_fast_comparison_end_to_end
0.65s setup    tests/test_grading.py::test_committed_student_notebooks_are_what_assign_makes
=========================== short test summary info ============================
FAILED tests/test_x.py::test_y - assert 1 == 2
1 failed, 191 passed, 2 warnings in 356.17s (0:05:56)
"""
    parsed = parse_pytest(output, top=2)
    assert parsed["summary"] == "1 failed, 191 passed, 2 warnings in 356.17s (0:05:56)"
    assert parsed["slowest"] == [
        {"seconds": 130.31, "when": "setup",
         "test": "tests/test_notebooks_00_04.py::test_student_notebook_runs_headless[00_start_here]"},
        {"seconds": 28.46, "when": "call", "test": "tests/test_compare.py::test_fast_comparison_end_to_end"}]
    assert parse_pytest("make: *** [Makefile:22] Error 1", top=15) == {"summary": None, "slowest": []}


def test_like_for_like_runs_exactly_the_base_tests_that_remain(tmp_path):
    """``--same-tests``: the new tree's tests that the base has too, in the new order, and the base's that are gone;
    the list reaches pytest through PYTEST_ADDOPTS (``@file``) and selects exactly those tests."""
    base = ["t/a.py::x", "t/a.py::gone[1]", "t/b.py::y[p-1]"]
    new = ["t/b.py::y[p-1]", "t/b.py::added", "t/a.py::x"]
    assert same_tests(base, new) == (["t/b.py::y[p-1]", "t/a.py::x"], ["t/a.py::gone[1]"])
    run = {"ok": True, "total_s": 230.0, "test_s": 200.0}
    assert ratios({"ok": True, "total_s": 460.0, "test_s": 400.0}, run) == {"ratio_total": 2.0, "ratio_test": 2.0}
    assert ratios({"ok": False, "total_s": 460.0, "test_s": 400.0}, run) == {"ratio_total": None, "ratio_test": None}
    (tmp_path / "test_sel.py").write_text("import pytest\n\ndef test_a(): pass\n\ndef test_b(): pass\n\n"
                                          "@pytest.mark.parametrize('n', [1, 2])\ndef test_c(n): pass\n")
    select = tmp_path / "ids.txt"
    select.write_text("test_sel.py::test_b\ntest_sel.py::test_c[2]\n")
    env = clean_env(tmp_path / "home", tmp_path / "cache", 3, select)
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert [line for line in out.stdout.splitlines() if "::" in line] == ["test_sel.py::test_b",
                                                                          "test_sel.py::test_c[2]"], out.stdout


def test_process_cpu_counts_what_the_block_starts_by_kind():
    """The test-suite benchmark's CPU breakdown: what a process starts while the block runs is counted, under the kind
    its command line says; a process already running, and one started meanwhile by another process, are not."""
    import shlex
    import subprocess
    import time

    from process_cpu import ProcessCPU

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass"
    before = subprocess.Popen([sys.executable, "-c", burn.format(3.0)])
    time.sleep(0.1)  # start times are in clock ticks (10 ms): this one starts ticks before the block
    # The block's process: a shell that starts a Python burning 1 CPU-second (`; true`: not exec'd in its place). The
    # Python then waits for its stdin to close, so that the block's last sample sees all of its CPU time, however
    # busy the machine.
    burner = burn.format(1.0) + "\nimport sys\nprint('burnt', flush=True)\nsys.stdin.read()"
    shell = subprocess.Popen(["sh", "-c", f"sleep 0.2; {shlex.quote(sys.executable)} -c {shlex.quote(burner)}; true"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with ProcessCPU(interval_s=0.1, root=shell.pid) as cpu:
            subprocess.run([sys.executable, "-c", burn.format(0.6)], check=True)  # another process's child
            assert shell.stdout.readline().strip() == "burnt"
    finally:
        shell.stdin.close()
        shell.wait()
        before.kill()
        before.wait()
    if not cpu.available:
        pytest.skip("no /proc here: the benchmark reports no CPU breakdown")
    assert 0.8 <= cpu.total() <= 1.4, cpu.processes
    # the shell's `sleep` uses next to no CPU, but time is charged in whole clock ticks (10 ms) now and then
    busy_kinds = {kind: s for kind, s in cpu.by_kind().items() if s >= 0.1}
    assert busy_kinds == {"other Python processes": pytest.approx(cpu.total(), abs=0.05)}, cpu.processes
    assert 0 < cpu.busy() <= 1.0


def test_a_process_first_seen_without_its_command_line_is_named_by_a_later_sample(monkeypatch):
    """A process caught inside execve (or a fork before it execs) shows no command line, or its parent's: the kind
    comes from the last command line read, not the first (one CI run counted a Python burner as "other")."""
    import process_cpu

    real, reads = process_cpu._argv, {}

    def racing(pid):  # the first read of every process finds it between fork and exec
        reads[pid] = reads.get(pid, 0) + 1
        return [] if reads[pid] == 1 else real(pid)

    monkeypatch.setattr(process_cpu, "_argv", racing)
    # burns 0.3 CPU-s, says so, then waits for its stdin to close: the block's samples see it alive and busy
    code = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
            "import sys\nprint('burnt', flush=True)\nsys.stdin.read()")
    with process_cpu.ProcessCPU(interval_s=0.05, root=os.getpid()) as cpu:
        burner = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert burner.stdout.readline().strip() == "burnt"
            time.sleep(0.2)  # a few more samples of it, alive
        finally:
            burner.stdin.close()
            burner.wait()
    if not cpu.available:
        pytest.skip("no /proc here: the benchmark reports no CPU breakdown")
    (seen,) = [p for (pid, _), p in cpu.processes.items() if pid == burner.pid]
    assert reads[burner.pid] > 1 and seen["cpu_s"] >= 0.2, cpu.processes
    assert process_cpu.kind_of(seen["argv"]) == "other Python processes", cpu.processes


def test_a_process_is_counted_by_what_it_runs_not_by_where_it_lies():
    from process_cpu import kind_of

    python = "/tmp/dpo-teach-bench-test-x/new/.venv/bin/python"  # a checkout's path says nothing of what runs
    for argv, kind in [([python, "-c", "import time"], "other Python processes"),
                       ([python, "-m", "ipykernel_launcher", "-f", "k.json"], "notebook kernels"),
                       ([python, "-m", "dpo_teach.warm_kernel", "/tmp/z/zygote", "-f", "k.json"], "notebook kernels"),
                       ([python, "-m", "dpo_teach.warm_kernel", "--zygote", "/tmp/z/zygote"], "notebook kernels"),
                       ([python, "-m", "dpo_teach.grading", "_zygote", "19"], "grading sandbox (zygotes, forks)"),
                       ([python, "-u", "-c", "import sys;exec(eval(sys.stdin.readline()))"],
                        "pytest-xdist workers (tests run in process)"),
                       ([python, "-B", "-c", "from multiprocessing.spawn import spawn_main; spawn_main()"],
                        "multiprocessing workers (the comparison's seeds)"),
                       ([python, "/x/.venv/bin/dpo-teach", "compare", "--fast"], "dpo-teach commands"),
                       ([python, "-W", "ignore::DeprecationWarning", "-m", "pip", "install"],
                        "installers (uv, pip, bytecode)"),
                       (["/tmp/pytest-of-root/pytest-9/venv/bin/python", "/root/.cache/uv/.tmp/pip_compileall.py"],
                        "installers (uv, pip, bytecode)"),
                       (["/usr/lib/chromium/chromium", "--headless"], "browser (the site's test)"),
                       (["make", "test"], "other")]:
        assert kind_of(argv) == kind, argv


def test_bench_claims_reruns_a_notebook_at_other_training_seeds_and_lists_what_did_not_always_hold(tmp_path):
    """``make bench-claims``: every ``DPOConfig(..., seed=0)`` takes each seed in turn; the claims that failed in some
    run are listed with where they are; a claim lost at seed 0 (what CI would fail on) is the exit status."""
    import json

    import nbformat
    from bench_claims import main as bench_claims

    setup = "from dpo_teach import claims\nDPOConfig = dict\nconfig = DPOConfig(beta=0.5,\n                   seed=0)"
    checks = "claims.check(config['seed'] != 1, 'holds but at seed 1')\nclaims.check(True)"
    cells = [nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(checks)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "98_probe.ipynb")
    out = tmp_path / "claims.json"
    ours = {name: value for name, value in os.environ.items() if name.startswith("DPO_TEACH_")}
    assert bench_claims(["98", "--seeds", "0", "1", "2", "--notebooks", str(tmp_path), "--out", str(out)]) == 0
    after = {name: value for name, value in os.environ.items() if name.startswith("DPO_TEACH_")}
    assert after == ours, "the bench left its claim settings in this process"
    result = json.loads(out.read_text())
    runs = [(r["seed"], r["error"], len(r["claims"])) for r in result["runs"]]
    assert runs == [(0, None, 2), (1, None, 2), (2, None, 2)]
    assert result["fragile"] == [{"index": 0, "claim": "holds but at seed 1", "held": {"0": True, "1": False,
                                                                                     "2": True},
                                  "at": "claims.check(config['seed'] != 1, 'holds but at seed 1')"}]
    (tmp_path / "98_probe.ipynb").rename(tmp_path / "97_probe.ipynb")
    assert bench_claims(["97", "--seeds", "1", "--notebooks", str(tmp_path), "--out", str(out)]) == 0  # no seed 0 run
    assert bench_claims(["97", "--seeds", "1", "0", "--notebooks", str(tmp_path), "--out", str(out)]) == 0
    nb = nbformat.read(tmp_path / "97_probe.ipynb", as_version=4)
    nb.cells[1].source = "claims.check(config['seed'] != 0, 'fails at seed 0')"
    nbformat.write(nb, tmp_path / "97_probe.ipynb")
    assert bench_claims(["97", "--seeds", "0", "--notebooks", str(tmp_path), "--out", str(out)]) == 1


def test_bench_claims_can_change_a_setting_of_every_config_and_refuses_what_it_cannot_change(tmp_path, capsys):
    """``--set beta=2.0``: the value of that keyword in every ``DPOConfig(...)`` that has it (not in code that merely
    names it), recorded with the runs; a keyword no config has, the seed, or a value that is no one piece of code is
    a one-line error before any run."""
    import json

    import nbformat
    from bench_claims import main as bench_claims

    setup = ("from dpo_teach import claims\nDPOConfig = dict\nconfig = DPOConfig(beta=0.5, seed=0)\n"
             "other = DPOConfig(\n    beta=0.5,\n    lr=1e-3, seed=0)\nbeta = 0.5  # not a config")
    checks = ("claims.check(config['beta'] == other['beta'] == 2.0 and other['lr'] == 1e-3 and beta == 0.5, "
              "'both configs changed, nothing else')")
    cells = [nbformat.v4.new_code_cell(setup), nbformat.v4.new_code_cell(checks)]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), tmp_path / "96_probe.ipynb")
    out = tmp_path / "claims.json"
    common = ["96", "--notebooks", str(tmp_path), "--out", str(out)]
    assert bench_claims([*common, "--seeds", "0", "1", "--set", "beta=2.0"]) == 0
    result = json.loads(out.read_text())
    assert result["settings"] == {"beta": "2.0"} and result["fragile"] == []
    assert [(r["seed"], r["error"], [c["held"] for c in r["claims"]]) for r in result["runs"]] == [
        (0, None, [True]), (1, None, [True])]
    assert "training seed 1, beta=2.0" in capsys.readouterr().out
    assert bench_claims([*common, "--seeds", "0", "--set", "beta=3.0"]) == 0  # lost at seed 0: measured, not CI's
    assert [row["held"] for row in json.loads(out.read_text())["fragile"]] == [{"0": False}]
    for bad, says in [("epochs=3", "no DPOConfig(...) in 96_probe.ipynb's code has epochs="),
                      ("seed=3", "the seed is what --seeds varies"), ("beta=", "is not NAME=VALUE"),
                      ("beta=f(1, 2)", "is not NAME=VALUE"), ("2beta=1", "is not NAME=VALUE")]:
        with pytest.raises(SystemExit) as stop:
            bench_claims([*common, "--seeds", "0", "--set", bad])
        assert stop.value.code == 2
        assert says in capsys.readouterr().err, bad
