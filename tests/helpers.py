"""Small builders shared by tests: job configs pointing at the session's home, reference predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from jobs.config import ScoringJobConfig
from jobs.demo import FEATURES


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


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-6, atol: float = 1e-12) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
