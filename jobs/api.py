"""The notebook API: score a DataFrame, compare two models, on the SparkSession you already have.

    from batchscore.jobs.api import score, compare
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
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from batchscore.jobs.compare import Comparison, sample_scores
from batchscore.jobs.config import DEFAULT_THRESHOLDS, MlflowSection, ModelSection
from batchscore.jobs.errors import ConfigError
from batchscore.jobs.inputs import ScoringInput
from batchscore.jobs.planning import Lineage, PlanRequest, build_plan, pair_plan
from batchscore.jobs.schema_check import check_input_schema
from batchscore.jobs.scoring import transform

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from batchscore.jobs.registry import ResolvedModel


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


def _resolve(uris: list[str], tracking_uri: str | None, registry_uri: str | None) -> list[ResolvedModel]:
    """Each URI resolved once, on the driver, to a pinned version."""
    from batchscore.jobs.registry import resolve_model
    from batchscore.jobs.tracking import tracking_target

    section = MlflowSection(
        tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), registry_uri=registry_uri
    )
    target = tracking_target(section)
    return [
        resolve_model(uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s)
        for uri in uris
    ]


def _request(
    df: DataFrame, uri: str, prediction_column: str, feature_columns: list[str] | None, batch_size: int
) -> PlanRequest:
    """Every column of ``df`` passes through and is kept in an invalid row's raw values; none of them is
    a key whose nulls make a row invalid."""
    try:
        model = ModelSection(uri=uri, prediction_column=prediction_column, batch_size=batch_size)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid model settings: {problems}") from None
    columns = tuple(df.columns)
    return PlanRequest(model, feature_columns, passthrough_columns=columns, raw_columns=columns)


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
    request = _request(df, model_uri, prediction_column, feature_columns, batch_size)
    (resolved,) = _resolve([model_uri], tracking_uri, registry_uri)
    plan = build_plan(resolved, request, df.columns, check_columns=False)
    check_input_schema(ScoringInput.of_frame(df), resolved, plan)
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
    from pyspark.sql import functions as F

    from batchscore.jobs.report import figures
    from batchscore.udfs.validation import REASON_COLUMN

    request = _request(df, champion_uri, "score", feature_columns, batch_size)
    champion, challenger = _resolve([champion_uri, challenger_uri], tracking_uri, registry_uri)
    plan, first, second = pair_plan(champion, challenger, request, df.columns)
    source = ScoringInput.of_frame(df)
    check_input_schema(source, champion, first)
    check_input_schema(source, challenger, second)
    scored = transform(df, champion.ref, plan, None).where(F.col(REASON_COLUMN).isNull())
    rows = scored.count()
    a, b = plan.outputs[0].name, plan.outputs[1].name
    sample = sample_scores(scored, a, b, label_column, rows=rows, max_rows=max_rows)
    comparison = sample.compare(
        threshold=decision_threshold, thresholds=DEFAULT_THRESHOLDS if thresholds is None else thresholds
    )
    made = dict(figures(sample.champion, sample.challenger, sample.labels)) if len(sample) else {}
    return ComparisonResult(comparison, rows, made)
