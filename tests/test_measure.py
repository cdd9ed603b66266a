"""The comparison's process measures (dpo_teach/measure.py): the peak memory of a block, both ways it is taken."""

from __future__ import annotations

import sys
import time

import pytest

from dpo_teach.measure import PeakMemory, stopwatch

MB = 2**20


def spike(mb: int) -> None:
    """Touch ``mb`` MB and free them at once: resident for well under a millisecond per MB."""
    block = bytearray(mb * MB)
    block[::4096] = b"\x01" * len(block[::4096])  # every page resident
    del block


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel peak", "sampled"])
def test_peak_counts_what_the_block_holds_and_not_what_was_freed_before(kernel):
    leftover = bytearray(150 * MB)
    leftover[::4096] = b"\x01" * len(leftover[::4096])
    del leftover  # freed before the block: not its memory
    with PeakMemory(kernel=kernel) as memory:
        held = bytearray(100 * MB)
        held[::4096] = b"\x01" * len(held[::4096])
        time.sleep(0.05)  # long enough for the sampling thread to see it
    if sys.platform.startswith("linux"):  # the kernel's peak where it is asked for, the thread where it is not
        assert memory.sampled is not kernel
    assert 95 <= memory.peak_mb <= 140, memory.peak_mb
    del held


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's peak: Linux only")
def test_the_kernel_peak_sees_a_spike_between_samples_and_costs_no_cpu():
    with PeakMemory() as memory, stopwatch() as times:
        spike(80)
        time.sleep(0.2)
    if memory.sampled:
        pytest.fail("Linux without a resettable peak (/proc/self/clear_refs): the comparison's peaks are sampled")
    assert memory.peak_mb >= 75, memory.peak_mb  # freed long before the exit, still counted
    assert times["cpu_s"] < 0.15, times  # no thread polling meanwhile (the spike itself takes a few ms)
