"""Loaded models, split into the two halves the scoring loop overlaps: ``decode`` (Arrow -> model input,
on the host, in the prefetch thread) and ``compute`` (model input -> numpy outputs, on the device).

``mlflow`` and ``torch`` are imported inside functions, so :mod:`udfs` imports without them and the GPU
check can drive :class:`TorchPredictor` with a module built in code.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from udfs.arrow_tensor import ModelOutput, features_to_numpy
from udfs.spec import ModelRef, ScoringPlan
from udfs.validation import has_nulls


class Predictor(Protocol):
    """A loaded model: ``decode`` a batch once, then ``compute`` any row range of it."""

    device: str

    def decode(self, batch: pa.RecordBatch) -> Any: ...

    def decode_if_valid(self, batch: pa.RecordBatch) -> Any | None:
        """``decode(batch)`` when the batch is provably valid for the model as a whole, else None (the
        scoring loop then checks it row by row)."""
        ...

    def compute(self, inputs: Any, start: int, stop: int) -> ModelOutput: ...

    def release_memory(self) -> None: ...


def _to_numpy(output: Any) -> ModelOutput:
    """Model outputs (tensor, dict or tuple of tensors) as float32-or-native numpy on the host."""
    import torch

    if isinstance(output, torch.Tensor):
        if output.dtype in (torch.float16, torch.bfloat16):
            output = output.float()
        result: np.ndarray[Any, Any] = output.detach().to("cpu").numpy()
        return result
    if isinstance(output, dict):
        return {str(k): np.asarray(_to_numpy(v)) for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return [np.asarray(_to_numpy(v)) for v in output]
    raise TypeError(
        f"expected the torch model to return a tensor, dict or tuple, found {type(output).__name__}"
    )


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
    skipped. For an MLP 32-128-64-1 on CPU that is ~8% less time per row. None for any other module."""
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
# GEMMs that add up in another order differ in the last bits (~1 ULP for the bench's MLP), not more.
ONEDNN_RTOL = 1e-5
ONEDNN_ATOL = 1e-6


def onednn_forward(module: Any, batch_size: int) -> Callable[[Any], Any] | None:
    """A forward function for a plain float32 MLP on CPU (see :func:`_plain_layers`) through oneDNN's
    linear kernels: weights prepacked once for ``batch_size`` rows, each ReLU fused into the layer before
    it, other activations in place. It takes row-major input (a column-major one costs oneDNN ~30%).

    Where MKL's sgemm runs an AVX2 code path (on AMD CPUs; torch's ``F.linear`` calls it), this is up to
    ~1.8x faster per model call: an MLP 32-128-64-1 at batch 2,048 on one core of an AMD EPYC (Zen 5),
    0.17-0.18 against 0.32-0.33 us/row. Results agree with the module's to float32 rounding (another order
    of additions, ~1 ULP), not bitwise. None when the module is not a plain float32 MLP on CPU, when this
    torch lacks oneDNN or its linear op, or when a probe batch does not match the module's own outputs
    within :data:`ONEDNN_RTOL`/:data:`ONEDNN_ATOL` (then the module's own ops run instead)."""
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


class TorchPredictor:
    """A ``torch.nn.Module`` resident on one device.

    On CPU, a plain MLP runs through :func:`cpu_forward` (``cpu_kernels``: ``onednn``, the default, or
    ``torch``; without autocast), decoded row-major where its kernels want it. On CUDA, ``decode`` copies
    the batch into pinned host memory and starts its transfer on a side stream, so the next batch moves to
    the GPU while the current one computes; ``compute`` waits for that copy only.
    """

    def __init__(
        self,
        module: Any,
        device: str,
        feature_columns: tuple[str, ...],
        row_shape: tuple[int, ...] = (),
        autocast: str | None = None,
        *,
        cpu_kernels: str = "onednn",
        batch_size: int = 4096,
    ) -> None:
        import torch

        self.module = module
        self.device = device
        self.feature_columns = feature_columns
        self.row_shape = row_shape
        self.cuda = device.startswith("cuda")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[autocast]
        self.copy_stream = torch.cuda.Stream(device=device) if self.cuda else None  # type: ignore[no-untyped-call]
        self.row_major = False
        if self.cuda:
            self.forward = module
        elif autocast is not None:  # autocast picks the dtypes of torch's own ops
            self.forward = sequential_forward(module) or module
        else:
            self.forward, self.row_major = cpu_forward(module, cpu_kernels, batch_size)

    def _features(self, batch: pa.RecordBatch) -> np.ndarray[Any, Any]:
        return features_to_numpy(batch, self.feature_columns, self.row_shape, row_major=self.row_major)

    def decode(self, batch: pa.RecordBatch) -> Any:
        return self._to_inputs(self._features(batch))

    def decode_if_valid(self, batch: pa.RecordBatch) -> Any | None:
        """No nulls (Arrow metadata), equal array lengths and a finite sum of the decoded float32 buffer
        prove every row valid: one vectorised pass instead of a check per column."""
        if has_nulls(batch, self.feature_columns):
            return None
        try:
            features = self._features(batch)
        except ValueError:  # arrays of different lengths: found and reported row by row
            return None
        if not np.isfinite(features.sum()):  # NaN, infinity, or a float32 overflow somewhere
            return None
        return self._to_inputs(features)

    def _to_inputs(self, features: np.ndarray[Any, Any]) -> Any:
        import torch

        with warnings.catch_warnings():
            # Zero-copy views of Arrow buffers are read-only; the model only reads its input.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            host = torch.from_numpy(features)
        if not self.cuda:
            return host
        host = host.pin_memory()
        try:
            with torch.cuda.stream(self.copy_stream):
                on_device = host.to(self.device, non_blocking=True)
                ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
                ready.record(self.copy_stream)
        except torch.cuda.OutOfMemoryError:
            return host  # no room for the whole batch: compute() moves row ranges over instead
        return (on_device, ready)

    def compute(self, inputs: Any, start: int, stop: int) -> ModelOutput:
        import torch

        if isinstance(inputs, tuple):
            tensor, ready = inputs
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            tensor.record_stream(stream)
            x = tensor[start:stop]
        else:
            x = inputs[start:stop]
            if self.cuda:
                x = x.to(self.device, non_blocking=True)
        device_type = "cuda" if self.cuda else "cpu"
        autocast = (
            torch.autocast(device_type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            output = self.forward(x)
        return _to_numpy(output)

    def release_memory(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.empty_cache()


class PyfuncPredictor:
    """Any MLflow pyfunc model, given a pandas frame with the columns its signature names."""

    device = "cpu"

    def __init__(self, model: Any, feature_columns: tuple[str, ...], input_names: tuple[str, ...]) -> None:
        self.model = model
        self.feature_columns = feature_columns
        self.input_names = input_names or feature_columns

    def decode_if_valid(self, batch: pa.RecordBatch) -> Any | None:
        return None  # any input types: the loop checks row by row

    def decode(self, batch: pa.RecordBatch) -> Any:
        frame = batch.select(list(self.feature_columns)).to_pandas()
        frame.columns = list(self.input_names)
        return frame

    def compute(self, inputs: Any, start: int, stop: int) -> ModelOutput:
        output = self.model.predict(inputs.iloc[start:stop])
        if isinstance(output, dict):
            return {str(k): np.asarray(v) for k, v in output.items()}
        return np.asarray(output)

    def release_memory(self) -> None:
        return None


class PairPredictor:
    """Champion and challenger resident in one worker (shadow mode): one decode, two computes.

    ``compute`` returns ``[champion_output, challenger_output]``, which the plan's two output columns take
    by position.
    """

    def __init__(self, champion: Predictor, challenger: Predictor) -> None:
        self.champion = champion
        self.challenger = challenger
        self.device = champion.device
        self.shared = (
            isinstance(champion, TorchPredictor)
            and isinstance(challenger, TorchPredictor)
            and champion.device == challenger.device
            and champion.feature_columns == challenger.feature_columns
            and champion.row_shape == challenger.row_shape
        )

    def decode(self, batch: pa.RecordBatch) -> Any:
        first = self.champion.decode(batch)
        return first, first if self.shared else self.challenger.decode(batch)

    def decode_if_valid(self, batch: pa.RecordBatch) -> Any | None:
        first = self.champion.decode_if_valid(batch)
        if first is None:
            return None
        second = first if self.shared else self.challenger.decode_if_valid(batch)
        return None if second is None else (first, second)

    def compute(self, inputs: Any, start: int, stop: int) -> ModelOutput:
        first, second = inputs
        return [
            np.asarray(self.champion.compute(first, start, stop)),
            np.asarray(self.challenger.compute(second, start, stop)),
        ]

    def release_memory(self) -> None:
        self.champion.release_memory()
        self.challenger.release_memory()


def _use_registry(ref: ModelRef) -> Any:
    """Point this worker's mlflow at the registry the driver resolved ``ref`` in; returns the module."""
    import mlflow

    mlflow.set_tracking_uri(ref.tracking_uri)
    mlflow.set_registry_uri(ref.registry_uri)
    return mlflow


def load_torch_module(ref: ModelRef, device: str) -> Any:
    """The registered torch module of ``ref`` (exactly its pinned version), in eval mode on ``device``."""
    import mlflow.pytorch

    _use_registry(ref)
    module = mlflow.pytorch.load_model(ref.load_uri, map_location=device)
    # torch.export (pt2) modules are already inference graphs and refuse eval().
    with contextlib.suppress(NotImplementedError):
        module.eval()
    with contextlib.suppress(NotImplementedError, AttributeError):
        module.to(device)
    return module


def load_predictor(ref: ModelRef, plan: ScoringPlan, device: str) -> Predictor:
    """Load ``ref`` from its registry onto ``device`` as a predictor for ``plan``."""
    if ref.flavor == "pytorch":
        module = load_torch_module(ref, device)
        return TorchPredictor(
            module,
            device,
            plan.feature_columns,
            plan.row_shape,
            plan.autocast,
            cpu_kernels=plan.cpu_kernels,
            batch_size=plan.batch_size,
        )
    model = _use_registry(ref).pyfunc.load_model(ref.load_uri)
    return PyfuncPredictor(model, plan.feature_columns, plan.input_names)
