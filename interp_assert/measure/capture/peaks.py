"""Largest activations per hidden state, reduced as the hidden states are produced (for
``massive_activation``). Used by :mod:`interp_assert.measure.capture.run` from its hidden-state hooks."""

from __future__ import annotations

import numpy as np
import torch

from interp_assert.measure.measurements import ActivationPeaks


class PeakAccumulator:
    """For each hidden-state index: the largest |x| seen so far, where, and the median |x| of
    the sequence it sits in (at that depth). Sequences are numbered in batch order."""

    def __init__(self, n_states: int) -> None:
        self.value = np.full(n_states, -1.0)
        self.median = np.zeros(n_states)
        self.where = np.zeros((n_states, 3), dtype=np.int64)  # sequence, position, dimension
        self.longest = 0
        self.width = 0

    def add(self, index: int, hidden: torch.Tensor, first_sequence: int) -> None:
        """``hidden[B, T, D]``: the residual stream at ``index`` for sequences ``first_sequence ..``."""
        magnitude = hidden.detach().float().abs()
        self.longest = max(self.longest, int(magnitude.shape[1]))
        self.width = int(magnitude.shape[2])
        flat = int(torch.argmax(magnitude))  # first occurrence on ties: deterministic
        batch, position, dimension = np.unravel_index(flat, tuple(magnitude.shape))
        value = float(magnitude[batch, position, dimension])
        if value > self.value[index]:
            self.value[index] = value
            self.median[index] = float(magnitude[batch].median())
            self.where[index] = (first_sequence + int(batch), int(position), int(dimension))

    def result(self) -> ActivationPeaks:
        return ActivationPeaks(
            value=self.value.copy(),
            median=self.median.copy(),
            sequence=self.where[:, 0].copy(),
            position=self.where[:, 1].copy(),
            dimension=self.where[:, 2].copy(),
            longest=self.longest,
            width=self.width,
        )
