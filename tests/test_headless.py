"""Notebooks run headless without stalling on a missed socket wake-up (dpo_teach/headless.py)."""

from __future__ import annotations

import asyncio
import time
from queue import Empty

import nbformat
import pytest

from dpo_teach.headless import in_slices, notebook_client


class MissedWakeUp:
    """A kernel channel whose first poll misses a message that is already there: it waits out its whole timeout
    and finds nothing (pyzmq's missed wake-up); the next poll returns the message."""

    def __init__(self):
        self.timeouts = []

    async def get_msg(self, timeout=None):
        self.timeouts.append(timeout)
        if len(self.timeouts) == 1:
            await asyncio.sleep(timeout)
            raise Empty
        return {"msg_type": "execute_reply"}


def test_a_missed_wake_up_costs_one_slice_not_the_whole_timeout():
    channel = MissedWakeUp()
    start = time.monotonic()
    msg = asyncio.run(in_slices(channel.get_msg, slice_s=0.05)(timeout=30))
    assert msg["msg_type"] == "execute_reply"
    assert time.monotonic() - start < 5, "waited for the cell's timeout, not for one slice"
    assert channel.timeouts[0] == 0.05


def test_nothing_arriving_still_times_out_at_the_timeout():
    async def silent(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(in_slices(silent, slice_s=0.05)(timeout=0.3))
    assert 0.29 < time.monotonic() - start < 2


def test_the_notebook_client_polls_its_kernel_in_slices():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 6 * 7\nprint(x)")],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    seen = {}
    client = notebook_client(nb, timeout=60, kernel_name="python3")

    def record(**_):
        seen.update({name: getattr(getattr(client.kc, f"{name}_channel").get_msg, "polls_in_slices", None)
                     for name in ("shell", "iopub")})

    client.on_cell_executed = record
    client.execute()
    assert seen == {"shell": 1.0, "iopub": 1.0}
    assert nb.cells[0].outputs[0]["text"] == "42\n"


def test_every_headless_run_goes_through_the_notebook_client():
    """nbclient's own client stalls on a missed wake-up: the package, the tests and the benchmarks use
    ``notebook_client`` (a raw ``NotebookClient(...)`` would bring the stalls back)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    raw = [f"{p.relative_to(root)}:{n}" for folder in ("dpo_teach", "tests", "benchmarks", "scripts")
           for p in sorted((root / folder).rglob("*.py")) if p.name not in ("headless.py", "test_headless.py")
           for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "NotebookClient(" in line]
    assert not raw, f"use dpo_teach.headless.notebook_client instead of nbclient.NotebookClient at {raw}"
