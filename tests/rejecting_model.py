"""A torch model that rejects rows: it raises on any feature whose magnitude is above 1e6.

Registered by value (cloudpickle) so that Spark's Python workers load it without importing ``tests``.
"""

from __future__ import annotations

import torch


class RejectsLargeValues(torch.nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 1e6).any()):
            raise ValueError("feature out of range (|x| > 1e6)")
        return torch.sigmoid(self.linear(x))
