"""CPU threads for small dense algebra: one thread beats several when every matmul is tiny, and by far
when another process holds a core (each tiny op then waits for a descheduled worker thread)."""

from __future__ import annotations

import contextlib

import torch

SMALL = 2_000_000  # problems with fewer values than this run on one thread


@contextlib.contextmanager
def threads_for(values: int):
    """Run the block on one CPU thread when it handles fewer than ``SMALL`` values."""
    before = torch.get_num_threads()
    if values < SMALL:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
