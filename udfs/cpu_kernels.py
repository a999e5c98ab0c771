"""CPU forward functions: for plain torch MLPs, the module's own ops with less work or oneDNN's fused
linear kernels; for any other float32 module, a copy whose ``nn.Linear`` layers run oneDNN's prepacked
kernels, checked against the module's own outputs on the first batch. Which one a worker runs is
:func:`cpu_forward`'s choice (``model.cpu_kernels``).

oneDNN's linear kernels are reached through torch's private ``torch.ops.mkldnn`` ops, used only on the
torch releases :data:`ONEDNN_TORCH` names (their signature is checked by the tests on the installed one);
elsewhere the module's own ops run. ``torch`` is imported inside functions, so :mod:`udfs` imports without
it.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Torch releases (from, to) whose private oneDNN ops ``mkldnn._reorder_linear_weight(weight, batch)`` and
# ``mkldnn._linear_pointwise(x, weight, bias, attr, scalars, algorithm)`` this module calls.
ONEDNN_TORCH = ((2, 1), (3, 0))


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
    if not onednn_usable():
        return None
    mkldnn = torch.ops.mkldnn
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


def onednn_usable(version: str | None = None) -> bool:
    """Whether this torch (or ``version``) is one of :data:`ONEDNN_TORCH` and has oneDNN and its ops."""
    import torch

    found = re.match(r"(\d+)\.(\d+)", version or torch.__version__)
    if found is None:
        return False
    release = (int(found.group(1)), int(found.group(2)))
    if not ONEDNN_TORCH[0] <= release < ONEDNN_TORCH[1]:
        return False
    mkldnn = torch.ops.mkldnn
    return bool(
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(mkldnn, "_reorder_linear_weight")
        and hasattr(mkldnn, "_linear_pointwise")
    )


def _onednn_linear_class() -> Any:
    import torch
    from torch import nn

    class OneDnnLinear(nn.Module):
        """``nn.Linear`` through oneDNN's kernel with its weight prepacked for the batch size; keeps the
        layer's ``weight`` and ``bias`` for code that reads them."""

        def __init__(self, layer: nn.Linear, batch_size: int) -> None:
            super().__init__()
            self.in_features, self.out_features = layer.in_features, layer.out_features
            self.weight, self.bias = layer.weight, layer.bias
            self.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), batch_size)

        def forward(self, x: Any) -> Any:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    return OneDnnLinear


def onednn_linears(module: Any, batch_size: int) -> Any | None:
    """A copy of ``module`` (any float32 CPU module) whose ``nn.Linear`` layers (that exact type: a
    subclass may be read by its owner rather than called) run oneDNN's prepacked kernel; None when it has
    none, is not float32 on CPU, or this torch is not :func:`onednn_usable`."""
    import torch
    from torch import nn

    if not onednn_usable() or any(m.training for m in module.modules()):  # live dropout: no fixed outputs
        return None
    params = list(module.parameters())
    if not params or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return None
    if not any(type(m) is nn.Linear for m in module.modules()):
        return None
    fast = copy.deepcopy(module)
    linear = _onednn_linear_class()
    with torch.inference_mode():
        for owner in list(fast.modules()):
            for name, child in list(owner.named_children()):
                if type(child) is nn.Linear and not _customised(child):
                    setattr(owner, name, linear(child, batch_size))
    return fast


def _close(found: Any, expected: Any) -> bool:
    """Outputs equal to float32 rounding: tensors, or tuples, lists and dicts of them."""
    import torch

    if isinstance(expected, torch.Tensor):
        return (
            isinstance(found, torch.Tensor)
            and found.shape == expected.shape
            and bool(torch.allclose(found, expected, rtol=ONEDNN_RTOL, atol=ONEDNN_ATOL))
        )
    if isinstance(expected, (tuple, list)):
        return (
            isinstance(found, (tuple, list))
            and len(found) == len(expected)
            and all(_close(a, b) for a, b in zip(found, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(found, dict)
            and found.keys() == expected.keys()
            and all(_close(found[k], v) for k, v in expected.items())
        )
    return False


class CheckedForward:
    """Runs ``fast`` where it gives the module's outputs: on the first batch both run (its first rows at
    most) and are compared; on a mismatch, or an error of ``fast`` then or later, the module's own ops run
    from then on, said once in the worker's log."""

    PROBE_ROWS = 257

    def __init__(self, module: Any, fast: Any, name: str) -> None:
        self.module, self.fast, self.name = module, fast, name
        self.chosen: Any = None

    def _fall_back(self, why: str) -> Any:
        log.info("%s: the model's own ops run on CPU (%s)", self.name, why)
        self.chosen = self.module
        return self.module

    def __call__(self, x: Any) -> Any:
        if self.chosen is None:
            probe = x[: self.PROBE_ROWS]
            try:
                found = self.fast(probe)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
                return self._fall_back(f"oneDNN's linear kernels failed: {exc}")(x)
            if not _close(found, self.module(probe)):
                return self._fall_back("oneDNN's linear kernels differ from its own outputs on a probe")(x)
            self.chosen = self.fast
        if self.chosen is self.module:
            return self.module(x)
        try:
            return self.fast(x)
        except (RuntimeError, NotImplementedError) as exc:
            return self._fall_back(f"oneDNN's linear kernels failed: {exc}")(x)


def cpu_forward(module: Any, kernels: str, batch_size: int) -> tuple[Callable[[Any], Any], bool]:
    """``(forward, row_major)``: how a CPU worker runs ``module``. ``kernels`` ``onednn``: a plain float32
    MLP through :func:`onednn_forward`, any other float32 module with linear layers through
    :func:`onednn_linears` checked by :class:`CheckedForward` (both on row-major input); ``torch``, or where
    oneDNN does not apply: a plain MLP through :func:`sequential_forward`, bitwise the module's outputs; any
    other module as is."""
    if kernels == "onednn":
        fast = onednn_forward(module, batch_size)
        if fast is not None:
            return fast, True
        if _plain_layers(module) is None:
            swapped = onednn_linears(module, batch_size)
            if swapped is not None:
                return CheckedForward(module, swapped, type(module).__name__), True
    elif kernels != "torch":
        raise ValueError(f"expected model.cpu_kernels onednn or torch, found {kernels!r}")
    return sequential_forward(module) or module, False
