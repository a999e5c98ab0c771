"""The bench's models beyond its plain MLP: architectures the CPU path is not tuned for (issue 34).

Every builder returns a float32 module in eval mode built from torch's own layers; the residual block is a
class defined inside its builder, so that mlflow's cloudpickle saves it by value and any worker loads it
without this file.
"""

from __future__ import annotations

from typing import Any


def layernorm_gelu(n_features: int, seed: int = 0) -> Any:
    """MLP n-128-64-1 with LayerNorm and GELU after each hidden layer, sigmoid output."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_features, 128), nn.LayerNorm(128), nn.GELU(),
        nn.Linear(128, 64), nn.LayerNorm(64), nn.GELU(),
        nn.Linear(64, 1), nn.Sigmoid(),
    ).eval()  # fmt: skip


def residual(n_features: int, seed: int = 0) -> Any:
    """n-128, two residual blocks of width 128 (Linear-ReLU-Dropout-Linear, add, LayerNorm), 128-1."""
    import torch
    from torch import nn

    class ResidualBlock(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.inner, self.outer = nn.Linear(width, width), nn.Linear(width, width)
            self.drop, self.norm = nn.Dropout(0.1), nn.LayerNorm(width)

        def forward(self, x: Any) -> Any:
            return self.norm(x + self.outer(self.drop(torch.relu(self.inner(x)))))

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_features, 128), ResidualBlock(128), ResidualBlock(128), nn.Linear(128, 1), nn.Sigmoid()
    ).eval()


def encoder(dim: int, seed: int = 1, tokens: int = 16) -> Any:
    """A transformer encoder over each row's ``dim`` floats as ``tokens`` tokens (2 layers, width 64, 4
    heads), mean-pooled, sigmoid output: the tensor-input workload."""
    import torch
    from torch import nn

    class MeanTokens(nn.Module):
        def forward(self, x: Any) -> Any:
            return x.mean(dim=1)

    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    return nn.Sequential(
        nn.Unflatten(1, (tokens, dim // tokens)), nn.Linear(dim // tokens, 64),
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), MeanTokens(),
        nn.Linear(64, 1), nn.Sigmoid(),
    ).eval()  # fmt: skip
