"""Notebooks run headless (nbclient) without stalling on a missed socket wake-up.

nbclient waits for each cell's ``execute_reply`` with one poll of the shell socket that lasts the cell's whole
timeout. pyzmq's asyncio sockets can miss the wake-up for a message that has arrived (seen here after a widget cell,
whose comm messages come in a burst): the reply sits in the socket until the poll times out, and only its last look
finds it. The run then goes on, correct but late by the whole timeout: 10 of 48 runs of notebook 01 on a 2-core
machine busy with other jobs stalled 40 s each under a 40-second cell timeout (the test suite's is 10 minutes).
:func:`notebook_client` polls the shell and IOPub channels in slices of at most a second instead, so a missed
wake-up costs at most one slice, and a timeout is still the cell's: 0 of 60 runs stalled, the slowest 13 s.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from queue import Empty

SLICE_S = 1.0  # the longest one poll of a kernel channel waits


def in_slices(get_msg: Callable[..., Awaitable[dict]], slice_s: float = SLICE_S) -> Callable[..., Awaitable[dict]]:
    """``get_msg(timeout)`` of a kernel channel, polling at most ``slice_s`` at a time until ``timeout`` (None:
    no limit) has passed; raises ``queue.Empty`` when nothing came by then, as the channel's own does."""

    async def get(timeout: float | None = None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await get_msg(timeout=slice_s if left is None else min(slice_s, left))
            except Empty:
                if left is not None and left <= slice_s:
                    raise

    get.polls_in_slices = slice_s  # type: ignore[attr-defined]  # tests/test_headless.py looks for it
    return get


def notebook_client(nb, warm: bool = False, **kwargs):
    """``nbclient.NotebookClient(nb, **kwargs)`` whose kernel client polls its shell and IOPub channels
    :func:`in_slices`; ``warm``: its kernel starts as a fork of a process that imported the heavy libraries once
    (:mod:`dpo_teach.warm_kernel`, what the test suite uses)."""
    from nbclient import NotebookClient

    if warm:
        from dpo_teach.warm_kernel import kernel_manager_class

        kwargs["kernel_manager_class"] = kernel_manager_class()

    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                channel.get_msg = in_slices(channel.get_msg)
            return kc

    return Client(nb, **kwargs)
