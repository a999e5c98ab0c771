"""oneDNN's linear kernels for any float32 module on CPU: checked against the module's own outputs on the
first batch, the module's own ops where they differ, fail or this torch is not one they were written for."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from batchscore.udfs import cpu_kernels
from batchscore.udfs.cpu_kernels import CheckedForward, cpu_forward, onednn_usable

F32 = {"rtol": 1e-5, "atol": 1e-6}


class Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)
        self.drop, self.norm = nn.Dropout(0.2), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.b(self.drop(torch.relu(self.a(x)))))


def layernorm_gelu() -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 32), nn.LayerNorm(32), nn.GELU(),
        nn.Linear(32, 1), nn.Sigmoid(),
    )  # fmt: skip


def residual() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), Residual(64), Residual(64), nn.Linear(64, 1), nn.Sigmoid())


def encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    return nn.Sequential(
        nn.Linear(8, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Flatten(),
        nn.Linear(4 * 32, 1),
    )  # fmt: skip


ARCHITECTURES = {
    "layernorm_gelu": (layernorm_gelu, (16,)),
    "residual": (residual, (16,)),
    "encoder": (encoder, (4, 8)),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_any_architecture_runs_onednns_linear_kernels_to_float32_rounding(name: str) -> None:
    build, shape = ARCHITECTURES[name]
    torch.manual_seed(1)
    module = build().eval()
    assert onednn_usable(), "torch's CPU build has oneDNN and its ops on this release"
    forward, row_major = cpu_forward(module, "onednn", 128)
    assert isinstance(forward, CheckedForward) and row_major
    swapped = [type(m).__name__ for m in forward.fast.modules()].count("OneDnnLinear")
    assert swapped == sum(type(m) is nn.Linear for m in module.modules()) > 0
    x = torch.randn(300, *shape)
    with torch.inference_mode():
        expected = module(x)
        found = forward(x)
        again = forward(x[:5])  # another batch size than the packing hint
    assert forward.chosen is forward.fast, "the probe matched: oneDNN's kernels run"
    torch.testing.assert_close(found, expected, **F32)
    torch.testing.assert_close(again, expected[:5], **F32)
    assert sum(type(m) is nn.Linear for m in module.modules()) > 0, "the module itself is not changed"


class Noisy(nn.Module):
    """Random in eval mode too: no two runs agree, so the fast path cannot be checked."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + torch.rand(x.shape[0], 2)


def test_a_module_whose_outputs_differ_runs_its_own_ops_said_once(caplog: pytest.LogCaptureFixture) -> None:
    module = Noisy().eval()
    forward, _ = cpu_forward(module, "onednn", 64)
    assert isinstance(forward, CheckedForward)
    with caplog.at_level(logging.INFO, logger="batchscore.udfs.cpu_kernels"), torch.inference_mode():
        for _ in range(3):
            assert forward(torch.randn(10, 4)).shape == (10, 2)
    assert forward.chosen is module
    said = (
        "Noisy: the model's own ops run on CPU "
        "(oneDNN's linear kernels differ from its own outputs on a probe)"
    )
    assert [r.getMessage() for r in caplog.records].count(said) == 1


def test_a_torch_outside_the_known_releases_runs_the_modules_own_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not onednn_usable("3.0.0") and not onednn_usable("2.0.1") and not onednn_usable("nightly")
    assert onednn_usable(torch.__version__)
    monkeypatch.setattr(cpu_kernels, "ONEDNN_TORCH", ((2, 1), (2, 2)))  # as if this torch were newer
    module = layernorm_gelu().eval()
    forward, row_major = cpu_forward(module, "onednn", 64)
    assert forward is module and not row_major
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)).eval()
    forward, row_major = cpu_forward(plain, "onednn", 64)
    assert not row_major, "the plain MLP's fused path needs the same ops"


def test_models_the_kernels_cannot_take_run_as_they_are() -> None:
    assert cpu_forward(layernorm_gelu().double().eval(), "onednn", 64)[0].__class__ is not CheckedForward
    assert cpu_forward(nn.Sequential(nn.LayerNorm(4)).eval(), "onednn", 64)[1] is False, "no linear layer"
    trained = residual()  # training mode: dropout is live
    assert cpu_forward(trained, "onednn", 64)[0] is trained
    assert cpu_forward(layernorm_gelu().eval(), "torch", 64)[1] is False, "cpu_kernels: torch"
