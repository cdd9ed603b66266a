"""No claim check can stop a student's Run All, and in CI every claim holds: both from the suite's one run of each
student notebook (``notebook_runs`` in conftest.py), made with ``DPO_TEACH_CLAIMS=record``.

In that mode each ``claims.check`` logs whether its claim held (the run's ``claims``; conftest turns any that did
not into the run's error, which tests/test_notebooks_00_04.py asserts is None: as strict as an ``assert``) and then
takes the failed-check path, as on a student's machine where the numbers differ: it prints what and why and the
notebook goes on. So the same run shows that the notebook reaches its end with every check failing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_teach import grading

ROOT = Path(__file__).resolve().parents[1]
GENERATED = [ROOT / "notebooks" / f"{p.stem}.ipynb" for p in sorted(grading.MASTERS.glob("*.ipynb"))]
FORCED = "claim not reproduced on this machine (forced: DPO_TEACH_CLAIMS=record)"


def printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("path", GENERATED, ids=[p.stem for p in GENERATED])
def test_notebook_finishes_with_every_claim_forced_to_fail(path, notebook_runs):
    run = notebook_runs.get(path, fast=True)
    assert run["stopped"] is None, f"{path.name} stopped with its claim checks failing: {run['stopped']}"
    nb = run["nb"]
    checking = [c for c in nb.cells if c.cell_type == "code" and "claims.check(" in c.source]
    assert checking, f"{path.name} checks no claim"
    assert len(run["claims"]) >= len(checking), "every claim check ran (a cell may check several claims)"
    for cell in checking:
        out = printed(cell)
        assert FORCED in out and "why this can happen:" in out and "The notebook goes on" in out, (
            f"{path.name}: a claim cell printed no clear message:\n{cell.source[:300]}\n--- output:\n{out[-500:]}")
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_a_failed_claim_fails_the_suite_run(tmp_path, monkeypatch, capsys):
    """What the suite's run relies on: in record mode a claim that does not hold is logged as such (and printed),
    one that holds as held; strict mode (a student's CI) raises instead."""
    import json

    from dpo_teach import claims

    log = tmp_path / "claims.jsonl"
    monkeypatch.setenv(claims.MODE_ENV, "record")
    monkeypatch.setenv(claims.LOG_ENV, str(log))
    monkeypatch.setenv(claims.STRICT_ENV, "0")
    claims.check(1 + 1 == 2, "arithmetic")
    claims.check(False, "a claim that fails here")
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"claim": "arithmetic", "held": True, "at": 'claims.check(1 + 1 == 2, "arithmetic")'},
        {"claim": "a claim that fails here", "held": False, "at": 'claims.check(False, "a claim that fails here")'}]
    assert capsys.readouterr().out.count(FORCED) == 2
    monkeypatch.setenv(claims.MODE_ENV, "")
    monkeypatch.setenv(claims.STRICT_ENV, "1")
    with pytest.raises(claims.ClaimFailed, match="a claim that fails here"):
        claims.check(False, "a claim that fails here")
