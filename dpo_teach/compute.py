"""What a training run costs, counted in sequences, so that every method of the comparison reports the same fields.

A "forward" or "backward" is one prompt + completion through one network; sampling a completion with the KV cache
costs about one forward over the sequence. Counts, unlike seconds, do not depend on the machine or its load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Compute:
    """What a training run cost, counted in sequences (one prompt + completion through one network).

    Generating a completion with the KV cache costs about one forward over the sequence, so it is counted once in
    ``forward`` as well as in ``completions``.
    """

    completions: int = 0  # completions sampled from the policy during training
    reward_model_calls: int = 0  # completions scored by the learned reward model
    ground_truth_calls: int = 0  # completions or pairs labelled by the ground truth ("the human")
    forward: int = 0  # sequences through a forward pass, any network
    backward: int = 0  # sequences through a backward pass

    def add(self, **counts: int) -> None:
        """Increase the named counters, e.g. ``compute.add(forward=64, backward=64)``."""
        for name, n in counts.items():
            setattr(self, name, getattr(self, name) + int(n))

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
