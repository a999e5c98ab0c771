"""The notebook API: score a DataFrame, compare two models, on the SparkSession you already have.

    from jobs.api import score, compare
    scored = score(df, "models:/fraud@champion", prediction_column="fraud_score")
    result = compare(df, "models:/fraud@champion", "models:/fraud@challenger", label_column="label")
    result.metrics, result.verdict, result.figures

Nothing here creates or stops a SparkSession: the DataFrame's own session runs the work. Aliases are
resolved once here, on the driver; executors load exactly that version from the registry (they never need
the driver's files). Tracking/registry URIs default to the job configs' defaults (the embedded SQLite store
in ``$BATCHSCORE_HOME``; ``MLFLOW_TRACKING_URI`` when set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jobs.compare import Comparison
from jobs.config import DEFAULT_THRESHOLDS, ScoringJobConfig

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from jobs.registry import ResolvedModel


@dataclass(frozen=True)
class ComparisonResult:
    """What :func:`compare` found: metrics, verdict, failing checks, and matplotlib figures by name."""

    comparison: Comparison
    rows: int
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return self.comparison.metrics

    @property
    def verdict(self) -> str:
        return self.comparison.verdict

    @property
    def failed(self) -> tuple[str, ...]:
        return self.comparison.failed


def _resolve(
    df: DataFrame,
    model_uris: list[str],
    *,
    prediction_column: str,
    feature_columns: list[str] | None,
    batch_size: int,
    tracking_uri: str | None,
    registry_uri: str | None,
) -> tuple[ScoringJobConfig, list[ResolvedModel]]:
    """The job config a notebook call stands for (the first URI as its model), and each URI resolved once
    to a pinned version."""
    from jobs.registry import resolve_model
    from jobs.tracking import tracking_target

    cfg = ScoringJobConfig.model_validate(
        {
            "name": "notebook",
            "model": {"uri": model_uris[0], "prediction_column": prediction_column, "batch_size": batch_size},
            # The DataFrame is the input; the path is never read. Every column passes through.
            "input": {"path": "<dataframe>", "feature_columns": feature_columns, "read_mode": "dataframe"},
            "output": {"path": "<dataframe>", "key_columns": list(df.columns), "partition_column": None},
            "mlflow": {
                "tracking_uri": tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
                "registry_uri": registry_uri,
                "log_run": False,
            },
        }
    )
    target = tracking_target(cfg.mlflow)
    return cfg, [
        resolve_model(uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s)
        for uri in model_uris
    ]


def score(
    df: DataFrame,
    model_uri: str,
    *,
    prediction_column: str = "prediction",
    feature_columns: list[str] | None = None,
    batch_size: int = 4096,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> DataFrame:
    """``df`` with the model's prediction column(s) and the lineage columns appended (lazy, like any
    DataFrame). Rows the model cannot take (null/NaN/inf features, wrong array lengths, or rejected by the
    model) get null predictions and a reason in ``_invalid_reason`` (their raw values in ``_invalid_row``)."""
    import uuid

    from jobs.schema_check import check_input_schema
    from jobs.score import Lineage, build_plan, transform

    cfg, (resolved,) = _resolve(
        df,
        [model_uri],
        prediction_column=prediction_column,
        feature_columns=feature_columns,
        batch_size=batch_size,
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
    )
    # Every column passes through, as a key would; none of them is a key whose nulls make a row invalid.
    plan = replace(build_plan(resolved, cfg, df.columns, check_columns=False), key_columns=())
    check_input_schema(df, resolved, plan, cfg)
    return transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, f"notebook-{uuid.uuid4().hex}"))


def compare(
    df: DataFrame,
    champion_uri: str,
    challenger_uri: str,
    *,
    label_column: str | None = None,
    decision_threshold: float = 0.5,
    thresholds: dict[str, float] | None = None,
    feature_columns: list[str] | None = None,
    batch_size: int = 4096,
    max_rows: int = 5_000_000,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
) -> ComparisonResult:
    """Score ``df`` with both models in one pass and compare them (the shadow job's metrics and verdict,
    without writing tables); ``figures`` holds the report's plots for display."""
    import numpy as np
    from pyspark.sql import functions as F

    from jobs.compare import compare as compare_scores
    from jobs.report import figures
    from jobs.schema_check import check_input_schema
    from jobs.score import pair_plan, transform
    from udfs.validation import REASON_COLUMN

    cfg, (champion, challenger) = _resolve(
        df,
        [champion_uri, challenger_uri],
        prediction_column="score",
        feature_columns=feature_columns,
        batch_size=batch_size,
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
    )
    plan, first, second = pair_plan(champion, challenger, cfg, challenger_uri, df.columns)
    plan = replace(plan, key_columns=())
    check_input_schema(df, champion, first, cfg)
    check_input_schema(df, challenger, second, cfg)
    scored = transform(df, champion.ref, plan, None).where(F.col(REASON_COLUMN).isNull())
    a, b = plan.outputs[0].name, plan.outputs[1].name
    label = [label_column] if label_column else []
    rows = scored.count()
    sample = scored if rows <= max_rows else scored.sample(fraction=max_rows / rows, seed=17)
    frame: Any = sample.select(a, b, *label).toPandas()
    labels = None
    if label_column:
        frame = frame[frame[label_column].notna()]
        labels = frame[label_column].to_numpy(dtype=np.float64)
    champion_scores = frame[a].to_numpy(dtype=np.float64)
    challenger_scores = frame[b].to_numpy(dtype=np.float64)
    comparison = compare_scores(
        champion_scores,
        challenger_scores,
        threshold=decision_threshold,
        thresholds=DEFAULT_THRESHOLDS if thresholds is None else thresholds,
        labels=labels,
    )
    made = dict(figures(champion_scores, challenger_scores, labels)) if len(frame) else {}
    return ComparisonResult(comparison, rows, made)
