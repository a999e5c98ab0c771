"""Torch models with bad behaviour: one raises on features above 1e6, one overflows, one is slow.

Registered by value (cloudpickle) so that Spark's Python workers load it without importing ``tests``.
"""

from __future__ import annotations

import time

import torch


class RejectsLargeValues(torch.nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 1e6).any()):
            raise ValueError("feature out of range (|x| > 1e6)")
        return torch.sigmoid(self.linear(x))


class OverflowsOnLargeFirstFeature(torch.nn.Module):
    """A model whose own arithmetic overflows: NaN for rows whose first feature is above ~88.7
    (``exp`` is infinite in float32 there, and inf - inf is NaN); in-range rows get a plain score."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grow = torch.exp(x[:, :1])
        return torch.sigmoid(self.linear(x)) + (grow - grow)


class SleepsEachCall(torch.nn.Module):
    """A plain score that takes ``seconds`` longer per model call: keeps a run scoring for a while."""

    def __init__(self, features: int, seconds: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, 1)
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.sigmoid(self.linear(x))
