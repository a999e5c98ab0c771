"""CPU forward functions for plain torch MLPs: the module's own ops with less work, or oneDNN's fused
linear kernels. Which one a worker runs is :func:`cpu_forward`'s choice (``model.cpu_kernels``).

``torch`` is imported inside functions, so :mod:`udfs` imports without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def _customised(module: Any) -> bool:
    """Whether ``module`` has forward hooks (its own or global) or a forward replaced on the instance."""
    import torch

    hooks = (
        module._forward_hooks,
        module._forward_pre_hooks,
        torch.nn.modules.module._global_forward_hooks,
        torch.nn.modules.module._global_forward_pre_hooks,
    )
    return "forward" in vars(module) or any(len(h) for h in hooks)


def _plain_layers(module: Any) -> list[Any] | None:
    """The layers of a plain ``nn.Sequential`` of ``Linear``, ``ReLU``, ``Sigmoid``, ``Tanh``, ``Identity``
    and eval-mode ``Dropout`` modules without hooks or a forward replaced on an instance (checked here,
    once), with the no-ops left out; None for any other module."""
    from torch import nn

    if type(module) is not nn.Sequential or _customised(module):
        return None
    layers: list[Any] = []
    for child in module:
        kind = type(child)
        if _customised(child):
            return None
        if kind in (nn.Linear, nn.ReLU, nn.Sigmoid, nn.Tanh):
            layers.append(child)
        elif not (kind is nn.Identity or (kind is nn.Dropout and not child.training)):
            return None
    return layers


def _activation_step(layer: Any, first: bool) -> Callable[[Any], Any]:
    """An activation layer's function: in place on the tensor the step before it made, out of place as the
    first step (its input is the model's input, never overwritten)."""
    import torch
    from torch import nn

    in_place, out_of_place = {
        nn.ReLU: (torch.relu_, torch.relu),
        nn.Sigmoid: (torch.sigmoid_, torch.sigmoid),
        nn.Tanh: (torch.tanh_, torch.tanh),
    }[type(layer)]
    return out_of_place if first else in_place


def _chain(steps: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def forward(x: Any) -> Any:
        for step in steps:
            x = step(x)
        return x

    return forward


def sequential_forward(module: Any) -> Callable[[Any], Any] | None:
    """A forward function for a plain MLP (see :func:`_plain_layers`) that gives bitwise the module's
    outputs with less work: each activation overwrites the tensor the layer before it made (never the
    model's input) instead of allocating and writing another, and the per-module call machinery is
    skipped, which matters for the small MLPs that spend much of each call outside the matmuls. None for any
    other module."""
    import torch
    from torch import nn

    layers = _plain_layers(module)
    if layers is None:
        return None
    steps: list[Callable[[Any], Any]] = []
    for layer in layers:
        if type(layer) is nn.Linear:
            steps.append(functools.partial(torch.nn.functional.linear, weight=layer.weight, bias=layer.bias))
        else:
            steps.append(_activation_step(layer, first=not steps))
    return _chain(steps)


# How close oneDNN's forward must come to the module's own on a probe batch before it replaces it: float32
# GEMMs that add up in another order differ in the last bits (about 1 ULP), not more.
ONEDNN_RTOL = 1e-5
ONEDNN_ATOL = 1e-6


def onednn_forward(module: Any, batch_size: int) -> Callable[[Any], Any] | None:
    """A forward function for a plain float32 MLP on CPU (see :func:`_plain_layers`) through oneDNN's
    linear kernels: weights prepacked once for ``batch_size`` rows, each ReLU fused into the layer before
    it, other activations in place. It takes row-major input, the layout oneDNN's kernels read fastest.

    It exists for CPUs where MKL's sgemm (which torch's ``F.linear`` calls) runs a slower AVX2 code path,
    as on AMD CPUs; ``bench/RESULTS.md`` has the measurements. Results agree with the module's to float32
    rounding (another order of additions, ~1 ULP), not bitwise. None when the module is not a plain
    float32 MLP on CPU, when this torch lacks oneDNN or its linear op, or when a probe batch does not match
    the module's own outputs within :data:`ONEDNN_RTOL`/:data:`ONEDNN_ATOL` (then the module's own ops
    run instead)."""
    import torch
    from torch import nn

    layers = _plain_layers(module)
    if not layers or not any(type(layer) is nn.Linear for layer in layers):
        return None
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in module.parameters()):
        return None
    mkldnn = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available() or not hasattr(mkldnn, "_reorder_linear_weight"):  # type: ignore[no-untyped-call]
        return None
    steps: list[Callable[[Any], Any]] = []
    try:
        with torch.inference_mode():
            i = 0
            while i < len(layers):
                layer = layers[i]
                if type(layer) is nn.Linear:
                    fused = i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU
                    packed = mkldnn._reorder_linear_weight(layer.weight.detach(), batch_size)
                    bias = None if layer.bias is None else layer.bias.detach()
                    steps.append(
                        functools.partial(
                            _fused_linear, mkldnn._linear_pointwise, packed, bias, "relu" if fused else "none"
                        )
                    )
                    i += 2 if fused else 1
                    continue
                steps.append(_activation_step(layer, first=not steps))
                i += 1
            forward = _chain(steps)
            width = next(layer.in_features for layer in layers if type(layer) is nn.Linear)
            probe = torch.randn(min(batch_size, 257), width, generator=torch.Generator().manual_seed(0))
            expected = module(probe)
            found = forward(probe)
            if found.shape != expected.shape or not torch.allclose(
                found, expected, rtol=ONEDNN_RTOL, atol=ONEDNN_ATOL
            ):
                return None
    except (RuntimeError, NotImplementedError, AttributeError, TypeError):  # an op this torch lacks
        return None
    return forward


def _fused_linear(op: Callable[..., Any], weight: Any, bias: Any, attr: str, x: Any) -> Any:
    return op(x, weight, bias, attr, [], "")


def cpu_forward(module: Any, kernels: str, batch_size: int) -> tuple[Callable[[Any], Any], bool]:
    """``(forward, row_major)``: how a CPU worker runs ``module``. ``kernels`` ``onednn``: a plain float32
    MLP through :func:`onednn_forward` (row-major input); ``torch``, or where oneDNN does not apply: a
    plain MLP through :func:`sequential_forward`, bitwise the module's outputs; any other module as is."""
    if kernels == "onednn":
        fast = onednn_forward(module, batch_size)
        if fast is not None:
            return fast, True
    elif kernels != "torch":
        raise ValueError(f"expected model.cpu_kernels onednn or torch, found {kernels!r}")
    return sequential_forward(module) or module, False
