"""Models other than the demo's pickled torch MLP: a plain pyfunc model and a torch.export (pt2) model
with a tensor signature and a vector output."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from batchscore.jobs.demo import FEATURES
from batchscore.jobs.planning import PlanRequest, build_plan
from batchscore.jobs.registry import resolve_model
from tests.conftest import DATES, Registry
from tests.helpers import assert_close, job_config, score_partition

WEIGHTS = np.linspace(-1.0, 1.0, len(FEATURES))


class LinearRisk(mlflow.pyfunc.PythonModel):
    """A non-torch model: a weighted sum of the features and its square."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        score = model_input[list(FEATURES)].to_numpy() @ WEIGHTS
        return pd.DataFrame({"risk": score, "risk_sq": score**2})


def _register(name: str, log) -> str:
    mlflow.set_experiment("test-flavors")
    with mlflow.start_run():
        info = log()
    from mlflow import MlflowClient

    version = MlflowClient().create_model_version(name, info.model_uri, info.run_id).version
    return str(version)


@pytest.fixture(scope="module")
def pyfunc_version(registry: Registry) -> str:
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    mlflow.set_tracking_uri(registry.tracking_uri)
    MlflowClient().create_registered_model("linear_risk")
    signature = ModelSignature(
        Schema([ColSpec("double", f) for f in FEATURES]),
        Schema([ColSpec("double", "risk"), ColSpec("double", "risk_sq")]),
    )
    return _register(
        "linear_risk",
        lambda: mlflow.pyfunc.log_model(name="model", python_model=LinearRisk(), signature=signature),
    )


def test_pyfunc_model_with_two_named_outputs(
    spark, registry: Registry, input_path: str, tmp_path: Path, pyfunc_version: str
) -> None:
    cfg = job_config(
        input_path, str(tmp_path / "out"), uri=f"models:/linear_risk/{pyfunc_version}", batch_size=50
    )
    assert resolve_model(cfg.model.uri, registry.tracking_uri).ref.flavor == "pyfunc"
    result, source = score_partition(spark, cfg, registry.tracking_uri, input_path, DATES[0])
    assert result["risk"].dtype == np.float64
    expected = source[list(FEATURES)].to_numpy() @ WEIGHTS
    assert_close(result["risk"].to_numpy(), expected)
    assert_close(result["risk_sq"].to_numpy(), expected**2)


@pytest.fixture(scope="module")
def pt2_version(registry: Registry) -> tuple[str, object]:
    import torch
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow.set_tracking_uri(registry.tracking_uri)
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).eval()
    signature = ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, len(FEATURES)))]),
        Schema([TensorSpec(np.dtype("float32"), (-1, 3))]),
    )
    example = np.zeros((4, len(FEATURES)), dtype=np.float32)
    MlflowClient().create_registered_model("embedder")
    version = _register(
        "embedder",
        lambda: mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example),
    )
    return version, model


def _embedder_config(input_path: str, tmp_path: Path, version: str, **model: object):
    """The pt2 embedder's job: its tensor signature takes the features by position, so they are named."""
    cfg = job_config(
        input_path, str(tmp_path / "out"), uri=f"models:/embedder/{version}", prediction_column="emb", **model
    )
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"feature_columns": list(FEATURES)})})


def test_torch_export_model_with_vector_output(
    spark, registry: Registry, input_path: str, tmp_path: Path, pt2_version: tuple[str, object]
) -> None:
    import torch

    version, model = pt2_version
    cfg = _embedder_config(input_path, tmp_path, version)
    result, source = score_partition(spark, cfg, registry.tracking_uri, input_path, DATES[1])
    with torch.no_grad():
        expected = model(torch.tensor(source[list(FEATURES)].to_numpy(), dtype=torch.float32)).numpy()
    # float32 matmuls over different batch shapes round differently; compare at float32 precision.
    assert result["emb"][0].dtype == np.float32 and len(result["emb"][0]) == 3  # array<float>
    assert_close(np.stack(result["emb"].to_numpy()), expected, rtol=1e-5, atol=1e-6)


def test_torch_export_model_through_the_executor_model_server(
    spark, registry: Registry, input_path: str, tmp_path: Path, pt2_version: tuple[str, object]
) -> None:
    """A vector output and a tensor signature travel through the server's wire format unchanged."""
    version, _ = pt2_version
    cfg = _embedder_config(input_path, tmp_path, version)
    worker, _ = score_partition(spark, cfg, registry.tracking_uri, input_path, DATES[1])
    shared_cfg = _embedder_config(input_path, tmp_path, version, sharing="executor")
    shared, _ = score_partition(spark, shared_cfg, registry.tracking_uri, input_path, DATES[1])
    worker, shared = worker.sort_values("transaction_id"), shared.sort_values("transaction_id")
    assert shared["emb"].iloc[0].dtype == np.float32 and len(shared["emb"].iloc[0]) == 3
    assert_close(np.stack(shared["emb"].to_numpy()), np.stack(worker["emb"].to_numpy()), rtol=1e-5, atol=1e-6)


def test_executor_sharing_of_a_pyfunc_model_is_a_config_error(
    registry: Registry, input_path: str, tmp_path: Path, pyfunc_version: str
) -> None:
    from batchscore.jobs.errors import ConfigError

    uri = f"models:/linear_risk/{pyfunc_version}"
    cfg = job_config(input_path, str(tmp_path / "out"), uri=uri, sharing="executor")
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    with pytest.raises(
        ConfigError, match=r"model.sharing: executor serves torch models; .* is a pyfunc model"
    ):
        build_plan(resolved, PlanRequest.for_job(cfg), ["transaction_id", "label", "ds", *FEATURES])


def test_tensor_signature_without_feature_columns_is_an_error(
    registry: Registry, input_path: str, tmp_path: Path, pt2_version: tuple[str, object]
) -> None:
    from batchscore.jobs.errors import SchemaMismatchError

    cfg = job_config(input_path, str(tmp_path / "out"), uri=f"models:/embedder/{pt2_version[0]}")
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    with pytest.raises(SchemaMismatchError, match=r"set input\.feature_columns"):
        build_plan(resolved, PlanRequest.for_job(cfg), ["transaction_id", "label", "ds", *FEATURES])


def test_wrong_number_of_values_per_row_is_a_schema_error(
    spark, registry: Registry, input_path: str, tmp_path: Path, pt2_version: tuple[str, object]
) -> None:
    """The tensor signature says 16 values per row: 15 scalar columns, or arrays of 12, are refused."""
    from pyspark.sql import functions as F

    from batchscore.jobs.errors import SchemaMismatchError
    from batchscore.jobs.score import run

    def cfg_for(path: str, features: list[str]):
        cfg = job_config(path, str(tmp_path / "out"), uri=f"models:/embedder/{pt2_version[0]}")
        return cfg.model_copy(update={"input": cfg.input.model_copy(update={"feature_columns": features})})

    with pytest.raises(SchemaMismatchError, match=r"the model expects 16 values per row, found 15 columns"):
        run(spark, cfg_for(input_path, list(FEATURES[:15])), DATES[0])
    arrays = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[0]}'")
    arrays = arrays.select("transaction_id", "label", "ds", F.array(*FEATURES[:12]).alias("emb"))
    arrays.write.format("delta").partitionBy("ds").save(str(tmp_path / "arrays"))
    with pytest.raises(
        SchemaMismatchError, match=r"emb: expected arrays of 16 values, found 12 in the first row"
    ):
        run(spark, cfg_for(str(tmp_path / "arrays"), ["emb"]), DATES[0])
    assert not (tmp_path / "out").exists()
