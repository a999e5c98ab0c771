"""Loading a pinned model inside a worker and running it on Arrow batches.

``mlflow`` and ``torch`` are imported here, inside the functions that run on the worker, so the driver can
import :mod:`udfs` cheaply and the scoring loop stays usable without mlflow.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from udfs.arrow_tensor import features_to_numpy
from udfs.spec import ModelRef, ScoringPlan


class Predictor(Protocol):
    """A loaded model: Arrow features in, a ``(rows, k)`` numpy array out."""

    def predict(self, batch: pa.RecordBatch) -> npt.NDArray[Any]: ...


class TorchPredictor:
    """A ``torch.nn.Module`` in eval mode on one device, fed float32 tensors built straight from Arrow."""

    def __init__(self, module: Any, device: str, feature_columns: tuple[str, ...]) -> None:
        self.module = module
        self.device = device
        self.feature_columns = feature_columns

    def predict(self, batch: pa.RecordBatch) -> npt.NDArray[Any]:
        import torch

        features = torch.from_numpy(features_to_numpy(batch, self.feature_columns))
        with torch.inference_mode():
            output = self.module(features.to(self.device))
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"expected the torch model to return one tensor, found {type(output).__name__}")
        result: npt.NDArray[Any] = output.detach().to("cpu").numpy()
        return result.reshape(result.shape[0], -1)


class PyfuncPredictor:
    """Any MLflow pyfunc model, given a pandas frame with the columns its signature names."""

    def __init__(self, model: Any, feature_columns: tuple[str, ...], input_names: tuple[str, ...]) -> None:
        self.model = model
        self.feature_columns = feature_columns
        self.input_names = input_names or feature_columns

    def predict(self, batch: pa.RecordBatch) -> npt.NDArray[Any]:
        frame = batch.select(list(self.feature_columns)).to_pandas()
        frame.columns = list(self.input_names)
        output = self.model.predict(frame)
        result = np.asarray(output)
        return result.reshape(result.shape[0], -1)


def load_predictor(ref: ModelRef, plan: ScoringPlan, device: str) -> Predictor:
    """Load ``ref`` (exactly its pinned version) from its registry onto ``device``."""
    import mlflow

    mlflow.set_tracking_uri(ref.tracking_uri)
    mlflow.set_registry_uri(ref.registry_uri)
    if ref.flavor == "pytorch":
        import mlflow.pytorch

        module = mlflow.pytorch.load_model(ref.load_uri, map_location=device)
        # torch.export (pt2) modules are already inference graphs and refuse eval().
        with contextlib.suppress(NotImplementedError):
            module.eval()
        return TorchPredictor(module, device, plan.feature_columns)
    return PyfuncPredictor(mlflow.pyfunc.load_model(ref.load_uri), plan.feature_columns, plan.input_names)
