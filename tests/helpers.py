"""Small builders shared by tests: job configs pointing at the session's home, reference predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from batchscore.jobs.config import ScoringJobConfig
from batchscore.jobs.demo import FEATURES


def job_config(input_path: str, output_path: str, **model: Any) -> ScoringJobConfig:
    return ScoringJobConfig.model_validate(
        {
            "name": "test_job",
            "model": {"uri": "models:/fraud@champion", "prediction_column": "fraud_score", **model},
            "input": {"path": input_path},
            "output": {
                "path": output_path,
                "key_columns": ["transaction_id"],
                "passthrough_columns": ["label"],
            },
            "mlflow": {"experiment": "tests"},
        }
    )


def reference_scores(model_uri: str, frame: pd.DataFrame) -> np.ndarray:
    """What MLflow's own pyfunc predicts for these rows: the reference we must match."""
    import mlflow

    predicted = mlflow.pyfunc.load_model(model_uri).predict(frame[list(FEATURES)])
    return np.asarray(predicted, dtype=np.float64).reshape(len(frame), -1)


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5, atol: float = 1e-12) -> None:
    """Equal to float32 rounding. Our CPU kernels (oneDNN) add up in another order than the module's own ops:
    a last-bit difference in a logit of -8.7 is ~1e-6 relative after the sigmoid (seen: 1.03e-6)."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def score_partition(
    spark: Any,
    cfg: ScoringJobConfig,
    tracking_uri: str,
    input_path: str,
    ds: str,
    *,
    resolved: Any = None,
    limit: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run ``transform`` on one input partition; return the scored rows and their source rows, aligned."""
    from batchscore.jobs.planning import Lineage, PlanRequest, build_plan
    from batchscore.jobs.registry import resolve_model
    from batchscore.jobs.scoring import transform

    resolved = resolved or resolve_model(cfg.model.uri, tracking_uri)
    partition = spark.read.format("delta").load(input_path).where(f"ds = '{ds}'")
    df = partition.limit(limit) if limit else partition
    plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
    scored = transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, "job-1")).toPandas()
    source = partition.toPandas().set_index("transaction_id").loc[scored["transaction_id"]].reset_index()
    return scored, source


def with_sections(cfg: ScoringJobConfig, **sections: dict[str, Any]) -> ScoringJobConfig:
    """``cfg`` with some keys of some sections replaced, validated again."""
    document = cfg.model_dump()
    for section, values in sections.items():
        document[section] = {**(document.get(section) or {}), **values}
    return ScoringJobConfig.model_validate(document)


def partition_frame(spark: Any, input_path: str, ds: str) -> pd.DataFrame:
    return spark.read.format("delta").load(input_path).where(f"ds = '{ds}'").toPandas()


def write_input(spark: Any, frame: pd.DataFrame, path: Path) -> str:
    spark.createDataFrame(frame).write.format("delta").mode("overwrite").partitionBy("ds").save(str(path))
    return str(path)


def with_bad_rows(
    spark: Any, input_path: str, tmp_path: Path, bad: dict[int, tuple[str, float | None]], ds: str
) -> str:
    """The ds partition of the demo input with feature values replaced in the given rows (by position in
    transaction_id order); done in Spark so NaN stays NaN (pandas would turn it into null)."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(input_path).where(f"ds = '{ds}'")
    ids = [r[0] for r in df.select("transaction_id").orderBy("transaction_id").collect()]
    for row, (column, value) in bad.items():
        replacement = F.lit(value).cast("double")
        df = df.withColumn(
            column, F.when(F.col("transaction_id") == ids[row], replacement).otherwise(F.col(column))
        )
    path = tmp_path / "input"
    df.write.format("delta").mode("overwrite").partitionBy("ds").save(str(path))
    return str(path)


def register_test_model(tracking_uri: str, model: Any, name: str) -> str:
    """Register a torch module of :mod:`tests.rejecting_model` (pickled by value, so workers load it
    without importing ``tests``) with the fraud signature; returns its ``models:/name/version`` URI."""
    import cloudpickle
    import mlflow

    import tests.rejecting_model as module
    from batchscore.jobs.demo import log_and_register

    cloudpickle.register_pickle_by_value(module)
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.set_experiment("tests")
    return f"models:/{name}/{log_and_register(model, name, experiment.experiment_id, name)}"


def model_servers() -> list[Any]:
    """Every ``model.sharing: executor`` server process on this machine (psutil processes)."""
    import psutil

    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if "batchscore.udfs.model_server" in (p.info["cmdline"] or [])
    ]
