"""Loaded models, split into the two halves the scoring loop overlaps: ``decode`` (Arrow -> model input,
on the host, in the prefetch thread) and ``compute`` (model input -> numpy outputs, on the device).

``mlflow`` and ``torch`` are imported inside functions, so :mod:`udfs` imports without them and the GPU
check can drive :class:`TorchPredictor` with a module built in code.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from batchscore.udfs.arrow_tensor import ModelOutput, features_to_numpy
from batchscore.udfs.cpu_kernels import cpu_forward, sequential_forward
from batchscore.udfs.model_files import load_local_torch, local_model
from batchscore.udfs.spec import ModelRef, ScoringPlan
from batchscore.udfs.validation import has_nulls


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


def valid_features(
    batch: pa.RecordBatch, columns: tuple[str, ...], row_shape: tuple[int, ...], *, row_major: bool
) -> np.ndarray[Any, Any] | None:
    """The decoded float32 features when they prove every row valid, else None (the scoring loop then
    checks row by row): no nulls (Arrow metadata), equal array lengths and a finite sum of the buffer, one
    vectorised pass instead of a check per column."""
    if has_nulls(batch, columns):
        return None
    try:
        features = features_to_numpy(batch, columns, row_shape, row_major=row_major)
    except ValueError:  # arrays of different lengths: found and reported row by row
        return None
    if not np.isfinite(features.sum()):  # NaN, infinity, or a float32 overflow somewhere
        return None
    return features


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
        features = valid_features(batch, self.feature_columns, self.row_shape, row_major=self.row_major)
        return None if features is None else self._to_inputs(features)

    def inputs_from_features(self, features: np.ndarray[Any, Any]) -> Any:
        """Model inputs from decoded features (the model server's requests arrive decoded)."""
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
    """The registered torch module of ``ref`` (exactly its pinned version), in eval mode on ``device``:
    from its files where this host can read them (no mlflow import), else through mlflow."""
    weights = local_model(ref)
    if weights is not None:
        return load_local_torch(weights, device)
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
