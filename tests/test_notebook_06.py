"""Notebook 06 (the instructor's demo of PPO, GRPO, RLOO, DPO and online DPO) runs headless in fast mode; its
shipped results back its claims; its exercise check tells a right answer from a wrong one.

That it is stored clean (no outputs, the fast-mode switch, the python3 kernel) is checked with every committed
notebook in ``tests/test_notebooks_00_04.py``.
"""

import contextlib
import io
import re

import nbformat
import torch

from dpo_teach import claims, conclusions, frontier
from dpo_teach.compare import FAST_METHODS
from dpo_teach.grading import NOTEBOOKS
from dpo_teach.headless import notebook_client

NOTEBOOK = NOTEBOOKS / "06_ppo_vs_dpo.ipynb"
ASSET = NOTEBOOKS / "assets" / "compare_results.json"


def test_notebook_is_stored_small():
    assert NOTEBOOK.stat().st_size < 1_000_000


def test_shipped_results_meet_the_acceptance_bar():
    """The numbers the notebook and the README quote: the full comparison, two seeds, every method with a sweep."""
    assert ASSET.stat().st_size < 400_000
    results = frontier.load_results(ASSET)
    assert len(results["config"]["seeds"]) >= 2 and len(results["config"]["betas"]) >= 3
    assert len(results["config"]["kl_coefs"]) >= 3
    assert set(frontier.methods_in(results)) == set(frontier.METHODS) >= set(FAST_METHODS)
    for method in frontier.METHODS:
        assert len({r["param"] for r in frontier.runs_of(results, method)}) >= 3, method
    assert 0.0 in results["config"]["grpo_betas"]
    best = frontier.best_settings(results)
    for method in ("PPO", "PPO-GT"):
        assert best[method]["reward_gain"][0] >= 0.3 and best[method]["fluent"], method
    assert results["wall_s"] <= 15 * 60


def test_readme_quotes_the_shipped_numbers():
    readme = (NOTEBOOKS.parent / "README.md").read_text()
    results = frontier.load_results(ASSET)
    section = readme.split("## PPO vs DPO (instructor demo)", 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split())  # a sentence as written, whatever the line breaks
    gap = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert f"{abs(gap['gap']):.3f}" in section
    lowest = {m: frontier.lowest_evaluated_kl(results, m) for m in ("DPO", "PPO")}  # why the grid starts where it does
    assert f"PPO's lowest evaluated KL is {lowest['PPO']:.2f} nats where DPO's is {lowest['DPO']:.2f}" in text
    for method, row in frontier.best_settings(results).items():
        assert f"{row['reward_gain'][0]:+.3f}" in section, method
    table = conclusions.results_table(results)  # the reward model's line, as `compare` prints it
    accuracy = re.search(r"held-out pairwise accuracy (\S+ ± \S+) \(BT-noise ceiling (\S+)\)", table)
    assert f"pairwise accuracy {accuracy.group(1)}, BT-noise ceiling {accuracy.group(2)}" in text
    said = {k: " ".join(v.split()) for k, v in conclusions.conclusions(results).items()}
    quoted = [f"frontier {a} vs {b}" for a, b, _ in conclusions.STORY  # the README's, word for word; a new pair too
              if (a, b) != ("online-DPO", "GRPO-GT")]  # (that one: notebook 06 only)
    assert len(quoted) == 8 and [k for k in quoted if said[k] not in text] == []
    assert said["length"].split(": ", 1)[1] in text, "the length sentence, as the shipped file gives it"
    assert " ".join(conclusions.completions_sentence(results).split()) in text, "the completions, as computed"
    verdict = said["verdict"].split(": ", 1)[1].split(" Ranking", 1)[0]  # after its heading, before the ranking
    assert verdict in text, f"the verdict, as the shipped file gives it (its standard error's wording too): {verdict}"


RELATION = "(lies above|lies mostly above|crosses|lies mostly below|lies below)"


def assert_headline_agrees(printed: str) -> None:
    """The one-line summary says where DPO's frontier lies in the words of the DPO-vs-PPO sentence above it."""
    head = re.search(r"In one line: DPO's frontier " + RELATION + " PPO's", printed)
    bullet = re.search(r"DPO's reward–KL frontier " + RELATION + " PPO's", printed)
    assert head and bullet, f"no one-line summary or no DPO-vs-PPO sentence in:\n{printed[-2000:]}"
    assert head.group(1) == bullet.group(1), (head.group(0), bullet.group(0))


def test_notebook_executes_headless_in_fast_mode(notebook_runs):
    run = notebook_runs.get(NOTEBOOK, fast=True)  # the suite's one run of 06 (the site is built from it too)
    assert run["stopped"] is None, f"06 stopped: {run['stopped']}"
    assert run["left_in_tmp"] == [], "06 left files in the temporary folder after its kernel stopped"
    nb = run["nb"]
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert_headline_agrees(printed)
    assert "sampled" in printed and "networks" in printed
    assert "Verdict at matched KL" in printed and "row − column" in str(nb.cells)
    assert "Exercise 6.1 (group advantages) is still a stub" in printed  # the stub: the package's version is used


def _exercise_check_output(solution: str) -> str:
    """The exercise's check cell run against ``solution`` (the source of ``my_group_advantages``)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    check = next(c.source for c in nb.cells if 'try_exercise("Exercise 6.1' in c.source)
    from dpo_teach.grpo import group_advantages

    namespace = {"torch": torch, "claims": claims, "group_advantages": group_advantages}
    exec(solution, namespace)  # noqa: S102
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(check, namespace)  # noqa: S102
    return out.getvalue()


def test_exercise_check_accepts_a_right_answer_and_rejects_wrong_ones():
    right = """
def my_group_advantages(scores, group_size):
    g = scores.view(-1, group_size)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).reshape(-1)
"""
    assert "✓ matches the package" in _exercise_check_output(right)
    not_scaled = right.replace(" / (g.std(1, keepdim=True) + 1e-4)", "")
    whole_batch = right.replace("g.mean(1, keepdim=True)", "g.mean()")
    for wrong in (not_scaled, whole_batch):
        assert "✗ differs" in _exercise_check_output(wrong)
    assert "raised ZeroDivisionError" in _exercise_check_output("def my_group_advantages(s, k):\n    return 1 / 0")


def test_results_file_opens_a_comparison_the_instructor_ran(tmp_path, monkeypatch):
    """``RESULTS_FILE``: the notebook opens a comparison run from the command line (here the shipped one cut to seed
    0, as ``dpo-teach compare --seeds 0`` would write it) instead of the shipped results. The switch and the loading
    cells run in this process: what they print is what the notebook shows."""
    import json

    results = json.loads(ASSET.read_text())
    results["config"]["seeds"] = [0]
    results["runs"] = [r for r in results["runs"] if r["seed"] == 0]
    for key in ("reference", "stages"):
        results[key] = {"0": results[key]["0"]}
    mine = tmp_path / "results.json"
    mine.write_text(json.dumps(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    switch = [c.source for c in nb.cells if c.cell_type == "code" and "\nRESULTS_FILE = None" in c.source]
    assert len(switch) == 1, "the RESULTS_FILE switch moved"
    loading = next(c.source for c in nb.cells if c.cell_type == "code" and "frontier.load_results(" in c.source)
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(switch[0].replace("\nRESULTS_FILE = None", f"\nRESULTS_FILE = {str(mine)!r}"), namespace)  # noqa: S102
        exec(loading, namespace)  # noqa: S102
    assert namespace["results"]["config"]["seeds"] == [0]
    assert f"training runs of {len(frontier.METHODS)} methods, seeds [0]" in out.getvalue()


def test_notebook_executes_with_a_smoke_sized_rerun(monkeypatch, cache_root):
    """``RERUN = True`` in fast mode: the comparison of the seven methods reruns at smoke size inside the notebook."""
    monkeypatch.setenv("DPO_TEACH_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    switch = [c for c in nb.cells if c.cell_type == "code" and "\nRERUN = False" in c.source]
    assert len(switch) == 1, "the RERUN switch moved"
    switch[0].source = switch[0].source.replace("\nRERUN = False", "\nRERUN = True")
    notebook_client(nb, warm=True, timeout=600, kernel_name="python3",
                    resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"training runs of {len(FAST_METHODS)} methods, seeds [0]" in printed
    assert_headline_agrees(printed)
    assert "GRPO" in printed
    # the run says where it wrote and leaves the table to the cells that render it (not printed once more as text)
    assert "/results.json, table.md, frontier.png" in printed and "## Frontier gaps at matched KL" not in printed
