"""The scoring job on real Spark, Delta and MLflow: correctness, alias pinning, idempotency, lineage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from delta.tables import DeltaTable

from batchscore.jobs.errors import MissingPartitionError, SchemaMismatchError
from batchscore.jobs.planning import LINEAGE_COLUMNS, Lineage, PlanRequest, build_plan, feature_row_bytes
from batchscore.jobs.registry import resolve_model
from batchscore.jobs.score import run
from batchscore.jobs.scoring import transform
from batchscore.udfs.spec import OutputField, ScoringPlan
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, job_config, reference_scores, score_partition


def test_scores_equal_mlflow_pyfunc(spark, registry: Registry, input_path: str, tmp_path: Path) -> None:
    cfg = job_config(input_path, str(tmp_path / "out"), batch_size=64)
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    df = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[0]}'")
    plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
    scored = transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, "job-1")).toPandas()

    expected = df.toPandas().sort_values("transaction_id").reset_index(drop=True)
    scored = scored.sort_values("transaction_id").reset_index(drop=True)
    # With on_invalid: quarantine (the default) every row says whether it was scored or why not.
    assert list(scored.columns) == [
        "transaction_id",
        "label",
        "ds",
        "fraud_score",
        "_invalid_reason",
        "_invalid_row",
        *LINEAGE_COLUMNS,
    ]
    assert scored["_invalid_reason"].isna().all() and scored["_invalid_row"].isna().all()
    assert scored["transaction_id"].tolist() == expected["transaction_id"].tolist()
    assert scored["label"].tolist() == expected["label"].tolist()
    reference = reference_scores(f"models:/fraud/{registry.champion}", expected)
    assert_close(scored[["fraud_score"]].to_numpy(), reference)
    assert set(scored["model_version"]) == {registry.champion}
    assert set(scored["model_name"]) == {"fraud"}
    assert set(scored["job_run_id"]) == {"job-1"}
    assert scored["model_run_id"].nunique() == 1 and scored["model_run_id"][0]


@pytest.mark.parametrize("batch_size", [1, 7, 100_000])
def test_model_batch_size_does_not_change_scores(
    spark, registry: Registry, input_path: str, tmp_path: Path, batch_size: int
) -> None:
    cfg = job_config(input_path, str(tmp_path / "out"), batch_size=batch_size)
    scored, source = score_partition(spark, cfg, registry.tracking_uri, input_path, DATES[1], limit=50)
    assert len(scored) == 50
    assert_close(
        scored[["fraud_score"]].to_numpy(), reference_scores(f"models:/fraud/{registry.champion}", source)
    )


def test_arrow_batches_are_sized_from_the_feature_columns() -> None:
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("id", T.LongType()),
            T.StructField("a", T.DoubleType()),
            T.StructField("b", T.FloatType()),
            T.StructField("emb", T.ArrayType(T.FloatType())),
            T.StructField("price", T.DecimalType(10, 2)),
        ]
    )

    def plan(features: tuple[str, ...], row_shape: tuple[int, ...] = ()) -> ScoringPlan:
        outputs = (OutputField("s", "float32"),)
        return ScoringPlan(features, ("id",), outputs, batch_size=64, row_shape=row_shape)

    assert feature_row_bytes(schema, plan(("a", "b"))) == 12
    assert feature_row_bytes(schema, plan(("emb",), (2, 4))) == 32  # the tensor signature fixes its length
    assert feature_row_bytes(schema, plan(("emb",))) is None  # its length may vary by row
    assert feature_row_bytes(schema, plan(("a", "price"))) is None


def test_alias_moved_after_resolution_does_not_change_the_job(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    cfg = job_config(input_path, str(tmp_path / "out"))
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    assert resolved.ref.version == registry.champion
    client.set_registered_model_alias("fraud", "champion", registry.challenger)
    try:
        scored, source = score_partition(
            spark, cfg, registry.tracking_uri, input_path, DATES[2], resolved=resolved
        )
    finally:
        client.set_registered_model_alias("fraud", "champion", registry.champion)
    assert set(scored["model_version"]) == {registry.champion}
    pinned = reference_scores(f"models:/fraud/{registry.champion}", source)
    moved = reference_scores(f"models:/fraud/{registry.challenger}", source)
    assert_close(scored[["fraud_score"]].to_numpy(), pinned)
    assert not np.allclose(pinned, moved, rtol=1e-3), "the two registered models must really differ"


def _partition(spark, path: str, ds: str):
    return (
        spark.read.format("delta").load(path).where(f"ds = '{ds}'").toPandas().sort_values("transaction_id")
    )


def test_rerun_replaces_exactly_one_partition_in_one_commit(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    out = str(tmp_path / "scores")
    cfg = job_config(input_path, out)
    first = run(spark, cfg, DATES[0])
    other = run(spark, cfg, DATES[1])
    assert first.rows_scored == other.rows_scored == ROWS_PER_DAY
    before_first, before_other = _partition(spark, out, DATES[0]), _partition(spark, out, DATES[1])
    version_before = DeltaTable.forPath(spark, out).history(1).collect()[0]["version"]

    again = run(spark, cfg, DATES[0])

    history = DeltaTable.forPath(spark, out).history(1).collect()[0]
    assert history["version"] == version_before + 1, "a rerun is exactly one Delta commit"
    assert history["userMetadata"] == again.job_run_id
    assert DATES[0] in history["operationParameters"]["predicate"]
    after_first, after_other = _partition(spark, out, DATES[0]), _partition(spark, out, DATES[1])
    assert len(after_first) == ROWS_PER_DAY, "no duplicates after a rerun"
    assert after_first["transaction_id"].tolist() == before_first["transaction_id"].tolist()
    assert_close(after_first[["fraud_score"]].to_numpy(), before_first[["fraud_score"]].to_numpy(), rtol=0)
    assert set(after_first["job_run_id"]) == {again.job_run_id} != {first.job_run_id}
    # The other partition is untouched: same rows, same lineage.
    assert after_other.reset_index(drop=True).equals(before_other.reset_index(drop=True))
    assert spark.read.format("delta").load(out).count() == 2 * ROWS_PER_DAY


def test_new_output_table_keeps_file_statistics_on_keys_and_scores_only(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "scores"
    run(spark, job_config(input_path, str(out)), DATES[0])
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{out}`").collect()[0]
    assert detail["properties"]["delta.dataSkippingStatsColumns"] == "transaction_id,fraud_score"
    adds = [
        json.loads(line)["add"]
        for log in sorted((out / "_delta_log").glob("*.json"))
        for line in log.read_text().splitlines()
        if '"add"' in line
    ]
    assert adds and all(
        set(json.loads(a["stats"])["minValues"]) == {"transaction_id", "fraud_score"} for a in adds
    )


def test_run_logs_params_and_metrics_to_mlflow(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    cfg = job_config(input_path, str(tmp_path / "out"))
    result = run(spark, cfg, DATES[2])
    logged = MlflowClient(registry.tracking_uri).get_run(result.job_run_id).data
    assert logged.params["model_uri"] == "models:/fraud@champion"
    assert logged.params["model_version"] == registry.champion
    assert logged.params["ds"] == DATES[2]
    assert logged.params["output"] == str(tmp_path / "out")
    assert logged.metrics["rows_scored"] == ROWS_PER_DAY
    assert logged.metrics["duration_s"] > 0
    assert logged.metrics["rows_per_s"] == pytest.approx(ROWS_PER_DAY / logged.metrics["duration_s"])
    # Runtime metrics sent by the workers with their rows and observed by the scoring query.
    metrics = logged.metrics
    # Workers are reused across the test session, so the model may already be resident: at most one load each.
    assert metrics["model_loads"] <= metrics["scoring_workers"]
    assert metrics["scoring_tasks"] >= 1
    assert metrics["model_batches"] >= 1
    assert 0 < metrics["batch_latency_p50_ms"] <= metrics["batch_latency_p99_ms"]
    assert 0 < metrics["model_call_p50_ms"] <= metrics["model_call_p99_ms"]
    # The scoring window (first scored batch to last) is part of the run, the rest its fixed cost.
    assert 0 < metrics["scoring_window_s"] < metrics["duration_s"]
    assert 0 <= metrics["model_load_s"] < metrics["duration_s"]  # 0 where the workers had it resident
    for stage in ("decode", "compute", "encode"):
        assert metrics[f"{stage}_total_s"] > 0
        assert metrics[f"{stage}_mean_ms"] > 0
    assert result.runtime == pytest.approx({k: v for k, v in metrics.items() if k in result.runtime})


def test_missing_partition_is_an_error_naming_the_latest_ones(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    with pytest.raises(
        MissingPartitionError, match=r"no partition ds=2020-01-01; latest partitions: \["
    ) as err:
        run(spark, job_config(input_path, str(tmp_path / "out")), "2020-01-01")
    assert DATES[-1] in str(err.value)
    assert not (tmp_path / "out").exists(), "nothing written"


def test_missing_feature_column_fails_before_writing(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    cfg = job_config(input_path, str(tmp_path / "out"))
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    df = spark.read.format("delta").load(input_path).drop("f3", "f7")
    with pytest.raises(SchemaMismatchError, match=r"lacks column\(s\) \['f3', 'f7'\]"):
        build_plan(resolved, PlanRequest.for_job(cfg), df.columns)


def test_ds_with_unpartitioned_output_is_refused_before_any_work(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from batchscore.jobs.errors import TableLocationError

    cfg = job_config(input_path, str(tmp_path / "out"))
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"partition_column": None})})
    with pytest.raises(TableLocationError, match=r"output\.partition_column is not set"):
        run(spark, cfg, DATES[0])
    assert not (tmp_path / "out").exists()


def test_bad_ds_is_rejected(spark, registry: Registry, input_path: str, tmp_path: Path) -> None:
    from batchscore.jobs.errors import TableLocationError

    with pytest.raises(
        TableLocationError, match="expected --ds as YYYY-MM-DD, found \"2026-11-29' OR '1'='1\""
    ):
        run(spark, job_config(input_path, str(tmp_path / "out")), "2026-11-29' OR '1'='1")


def test_scores_read_twice_are_cached_without_the_partition_value_and_freed(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from batchscore.jobs.inputs import ScoringInput
    from batchscore.jobs.scoring import kept, score

    cfg = job_config(input_path, str(tmp_path / "out"))
    df = ScoringInput.open(spark, cfg.input, DATES[0])
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
    cache = spark._jsparkSession.sharedState().cacheManager()
    with kept() as keep:
        scored = score(df, resolved.ref, plan, lineage=None, keep=keep)
        rows = scored.collect()
        cached = [
            line
            for line in scored._jdf.queryExecution().optimizedPlan().toString().splitlines()
            if "InMemoryRelation" in line
        ]
        assert len(cached) == 1 and "transaction_id" in cached[0] and "fraud_score" in cached[0]
        assert "ds#" not in cached[0], "the partition value is added after the cache, not stored per row"
        assert not cache.isEmpty()
    assert cache.isEmpty(), "leaving kept() unpersists"
    assert len(rows) == ROWS_PER_DAY and {r["ds"] for r in rows} == {DATES[0]}
    assert scored.columns[: len(plan.passthrough_columns)] == list(plan.passthrough_columns)
