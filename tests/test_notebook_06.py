"""Notebook 06 (the instructor's PPO vs DPO demo) runs headless in fast mode; its shipped results back its claims.

That it is stored clean (no outputs, the fast-mode switch, the python3 kernel) is checked with every committed
notebook in ``tests/test_notebooks_00_04.py``.
"""

import nbformat
from nbclient import NotebookClient

from dpo_teach import frontier
from dpo_teach.grading import NOTEBOOKS

NOTEBOOK = NOTEBOOKS / "06_ppo_vs_dpo.ipynb"
ASSET = NOTEBOOKS / "assets" / "compare_results.json"


def test_notebook_is_stored_small():
    assert NOTEBOOK.stat().st_size < 1_000_000


def test_shipped_results_meet_the_acceptance_bar():
    """The numbers the notebook and the README quote: the full comparison, two seeds, all three methods."""
    assert ASSET.stat().st_size < 300_000
    results = frontier.load_results(ASSET)
    assert len(results["config"]["seeds"]) >= 2 and len(results["config"]["betas"]) >= 3
    assert len(results["config"]["kl_coefs"]) >= 3
    best = frontier.best_settings(results)
    for method in ("PPO", "PPO-GT"):
        assert best[method]["reward_gain"][0] >= 0.3 and best[method]["fluent"], method
    assert results["wall_s"] <= 15 * 60


def test_readme_quotes_the_shipped_numbers():
    readme = (NOTEBOOKS.parent / "README.md").read_text()
    results = frontier.load_results(ASSET)
    section = readme.split("## PPO vs DPO (instructor demo)", 1)[1].split("\n## ", 1)[0]
    gap = frontier.matched_kl_gap(results, "DPO", "PPO")
    assert f"{abs(gap['gap']):.3f}" in section
    for method, row in frontier.best_settings(results).items():
        assert f"{row['reward_gain'][0]:+.3f}" in section, method


def test_notebook_executes_headless_in_fast_mode(monkeypatch):
    monkeypatch.setenv("DPO_TEACH_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "In one line: DPO's frontier lies" in printed
    assert "sampled" in printed and "networks" in printed
