"""Reliability guarantees (README "Reliability"): schema checks, quarantine, fail-safe writes, clear errors,
edge sizes, concurrency and secrets. Real Spark, real Delta, real MLflow registry."""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable

from batchscore.jobs.config import ScoringJobConfig
from batchscore.jobs.demo import FEATURES
from batchscore.jobs.errors import (
    ExecutorError,
    InvalidInputError,
    ModelResolutionError,
    SchemaMismatchError,
    TableLocationError,
)
from batchscore.jobs.score import run
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import (
    assert_close,
    job_config,
    partition_frame,
    reference_scores,
    register_test_model,
    with_bad_rows,
    with_sections,
    write_input,
)

DS = DATES[0]


def _latest_version(spark, path: str) -> int:
    return int(DeltaTable.forPath(spark, path).history(1).collect()[0]["version"])


def test_schema_check_lists_every_offending_column_and_writes_nothing(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(input_path).where(f"ds = '{DS}'")
    bad = df.drop("f2").withColumn("f1", F.col("f1").cast("string")).withColumn("junk", F.lit(1))
    bad.write.format("delta").partitionBy("ds").save(str(tmp_path / "input"))
    cfg = with_sections(
        job_config(str(tmp_path / "input"), str(tmp_path / "out")), input={"allow_extra_columns": False}
    )
    with pytest.raises(SchemaMismatchError) as err:
        run(spark, cfg, DS)
    message = str(err.value)
    assert "f1: expected numeric, found string" in message
    assert "f2: feature column expected, not found" in message
    assert "junk: not used by the job" in message
    assert "nothing was scored or written" in message
    assert not (tmp_path / "out").exists()


def test_invalid_rows_go_to_quarantine_and_valid_rows_are_scored(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    bad = {3: ("f0", None), 10: ("f5", math.nan), 20: ("f15", math.inf)}  # 3 of 400 rows: 0.75% <= 1%
    path = with_bad_rows(spark, input_path, tmp_path, bad, DS)
    out = tmp_path / "out"
    result = run(spark, job_config(path, str(out)), DS)

    frame = partition_frame(spark, path, DS).sort_values("transaction_id").reset_index(drop=True)
    bad_ids = {int(frame.loc[row, "transaction_id"]) for row in bad}
    assert result.rows_scored == ROWS_PER_DAY - 3 and result.invalid_rows == 3
    scored = spark.read.format("delta").load(str(out)).toPandas().sort_values("transaction_id")
    assert set(scored["transaction_id"]) == set(frame["transaction_id"]) - bad_ids
    valid = frame[~frame["transaction_id"].isin(bad_ids)].reset_index(drop=True)
    reference = reference_scores(f"models:/fraud/{registry.champion}", valid)
    assert_close(scored[["fraud_score"]].to_numpy(), reference)

    quarantine = spark.read.format("delta").load(f"{out}_quarantine").toPandas()
    assert set(quarantine["transaction_id"]) == bad_ids
    reasons = dict(zip(quarantine["transaction_id"], quarantine["reason"], strict=True))
    assert reasons[int(frame.loc[3, "transaction_id"])] == "f0: null"
    assert reasons[int(frame.loc[10, "transaction_id"])] == "f5: NaN"
    assert reasons[int(frame.loc[20, "transaction_id"])] == "f15: infinite"
    raw = json.loads(
        quarantine.loc[quarantine["transaction_id"] == int(frame.loc[10, "transaction_id"]), "raw_row"].iloc[
            0
        ]
    )
    assert raw["f5"] == "nan" and raw["f4"] == pytest.approx(frame.loc[10, "f4"])
    assert set(quarantine["job_run_id"]) == {result.job_run_id} and set(quarantine["ds"]) == {DS}
    metrics = MlflowClient(registry.tracking_uri).get_run(result.job_run_id).data.metrics
    assert metrics["invalid_rows"] == 3 and metrics["rows_scored"] == ROWS_PER_DAY - 3

    # A rerun on repaired input clears this run's quarantine rows for the partition.
    again = run(spark, job_config(input_path, str(out)), DS)
    assert again.invalid_rows == 0 and again.rows_scored == ROWS_PER_DAY
    assert spark.read.format("delta").load(f"{out}_quarantine").where(f"ds = '{DS}'").count() == 0


def test_too_many_invalid_rows_fail_and_leave_both_tables_as_they_were(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    run(spark, job_config(with_bad_rows(spark, input_path, tmp_path / "a", {1: ("f1", None)}, DS), out), DS)
    versions = (_latest_version(spark, out), _latest_version(spark, f"{out}_quarantine"))
    before = spark.read.format("delta").load(out).toPandas()

    bad = {row: ("f2", math.nan) for row in range(0, 40, 4)}  # 10 of 400 = 2.5% > 1%
    path = with_bad_rows(spark, input_path, tmp_path / "b", bad, DS)
    with pytest.raises(InvalidInputError, match=r"10 of 400 input rows \(2\.50%\) are invalid.*f2: NaN"):
        run(spark, job_config(path, out), DS)
    assert (_latest_version(spark, out), _latest_version(spark, f"{out}_quarantine")) == versions
    after = spark.read.format("delta").load(out).toPandas()
    assert (
        after.sort_values("transaction_id")
        .reset_index(drop=True)
        .equals(before.sort_values("transaction_id").reset_index(drop=True))
    )
    # The limit is the job's to choose.
    relaxed = with_sections(job_config(path, out), quality={"max_invalid_fraction": 0.05})
    assert run(spark, relaxed, DS).invalid_rows == 10


def test_on_invalid_fail_names_the_row_and_writes_nothing(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    path = with_bad_rows(spark, input_path, tmp_path, {7: ("f9", None)}, DS)
    frame = partition_frame(spark, path, DS).sort_values("transaction_id").reset_index(drop=True)
    cfg = with_sections(job_config(path, str(tmp_path / "out")), quality={"on_invalid": "fail"})
    with pytest.raises(InvalidInputError) as err:
        run(spark, cfg, DS)
    message = str(err.value)
    assert f'"transaction_id": {int(frame.loc[7, "transaction_id"])}' in message and "f9: null" in message
    assert "\n" not in message
    assert not DeltaTable.isDeltaTable(spark, str(tmp_path / "out")), "no commit"


def _register_rejecting_model(registry: Registry) -> str:
    """A torch model that raises on any feature above 1e6: the rows it rejects are data, not a bug."""
    import tests.rejecting_model as module

    return register_test_model(registry.tracking_uri, module.RejectsLargeValues(len(FEATURES)), "rejecting")


def test_rows_the_model_rejects_are_quarantined(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    uri = _register_rejecting_model(registry)
    path = with_bad_rows(spark, input_path, tmp_path, {5: ("f3", 1e9), 300: ("f8", -5e7)}, DS)
    frame = partition_frame(spark, path, DS).sort_values("transaction_id").reset_index(drop=True)
    out = tmp_path / "out"
    result = run(spark, job_config(path, str(out), uri=uri, batch_size=64), DS)
    assert result.invalid_rows == 2 and result.rows_scored == ROWS_PER_DAY - 2
    quarantine = spark.read.format("delta").load(f"{out}_quarantine").toPandas()
    assert set(quarantine["transaction_id"]) == {int(frame.loc[r, "transaction_id"]) for r in (5, 300)}
    assert all(
        r.startswith("model rejected the row: ValueError: feature out of range") for r in quarantine["reason"]
    )


@pytest.mark.parametrize("sharing", ["worker", "executor"])
def test_model_that_fails_to_load_on_executors_names_the_reason(
    spark, registry: Registry, input_path: str, tmp_path: Path, sharing: str
) -> None:
    import shutil

    from mlflow import MlflowClient

    uri = _register_rejecting_model(registry)
    version = uri.rsplit("/", 1)[1]
    source = MlflowClient(registry.tracking_uri).get_model_version_download_uri("rejecting", version)
    weights = next(Path(source.removeprefix("file://")).rglob("model.pth"))
    shutil.copy(weights, tmp_path / "saved.pth")
    weights.write_bytes(b"not a torch file")  # the model's artifact is corrupt on every executor
    try:
        with pytest.raises(ExecutorError) as err:
            run(spark, job_config(input_path, str(tmp_path / "out"), uri=uri, sharing=sharing), DS)
    finally:
        shutil.copy(tmp_path / "saved.pth", weights)
    message = str(err.value)
    assert f"model models:/rejecting/{version} failed to load on " in message
    assert "\n" not in message and message.count("BATCHSCORE_ERROR") == 0, message
    assert not DeltaTable.isDeltaTable(spark, str(tmp_path / "out")), "no commit"


def test_clear_errors_for_missing_input_and_unreachable_mlflow(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import time

    with pytest.raises(TableLocationError, match=r"expected an existing delta table, found none"):
        run(spark, job_config(str(tmp_path / "nowhere"), str(tmp_path / "out")), DS)
    cfg = with_sections(
        job_config(input_path, str(tmp_path / "out")),
        mlflow={"tracking_uri": "http://scorer:hunter2@127.0.0.1:9"},
    )
    started = time.monotonic()
    with pytest.raises(
        ModelResolutionError, match=r"cannot reach the MLflow server at http://127\.0\.0\.1:9"
    ) as err:
        run(spark, cfg, DS)
    assert time.monotonic() - started < 30 and "hunter2" not in str(err.value)


def test_empty_partition_scores_zero_rows(spark, registry: Registry, tmp_path: Path) -> None:
    """A partition whose files hold no rows (here a Parquet input) succeeds with zero rows."""
    schema = pa.schema(
        [("transaction_id", pa.int64()), ("label", pa.int32())] + [(f, pa.float64()) for f in FEATURES]
    )
    partition = tmp_path / "input" / "ds=2026-01-05"
    partition.mkdir(parents=True)
    pq.write_table(schema.empty_table(), partition / "part-0.parquet")
    cfg = with_sections(
        job_config(str(tmp_path / "input"), str(tmp_path / "out")), input={"format": "parquet"}
    )
    result = run(spark, cfg, "2026-01-05")
    assert result.rows_scored == 0 and result.invalid_rows == 0
    assert spark.read.format("delta").load(str(tmp_path / "out")).count() == 0


@pytest.mark.parametrize("read_mode", ["files", "dataframe"])
def test_one_row_and_one_row_partitions(
    spark, registry: Registry, input_path: str, tmp_path: Path, read_mode: str
) -> None:
    frame = partition_frame(spark, input_path, DS).sort_values("transaction_id").head(5)
    one = tmp_path / "one"
    write_input(spark, frame.head(1), one)
    cfg = with_sections(
        job_config(str(one), str(tmp_path / "out1"), batch_size=1000), input={"read_mode": read_mode}
    )
    assert run(spark, cfg, DS).rows_scored == 1
    # Five files of one row each (five partitions of one row), batch size far above a partition.
    for i in range(5):
        one_row = spark.createDataFrame(frame.iloc[i : i + 1])
        one_row.write.format("delta").mode("append").partitionBy("ds").save(str(tmp_path / "five"))
    assert len(list((tmp_path / "five").rglob("*.parquet"))) == 5
    cfg = with_sections(
        job_config(str(tmp_path / "five"), str(tmp_path / "out5"), batch_size=100_000),
        input={"read_mode": read_mode},
    )
    assert run(spark, cfg, DS).rows_scored == 5
    scored = spark.read.format("delta").load(str(tmp_path / "out5")).toPandas().sort_values("transaction_id")
    assert scored["transaction_id"].tolist() == frame["transaction_id"].tolist()
    assert_close(
        scored[["fraud_score"]].to_numpy(), reference_scores(f"models:/fraud/{registry.champion}", frame)
    )


def test_two_jobs_write_different_partitions_of_one_table_concurrently(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    run(spark, job_config(input_path, out), DATES[0])  # the table exists before the concurrent runs
    errors: list[BaseException] = []

    def score(ds: str) -> None:
        try:
            run(spark, job_config(input_path, out), ds)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=score, args=(ds,)) for ds in DATES[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    counts = spark.read.format("delta").load(out).groupBy("ds").count().toPandas()
    assert dict(zip(counts["ds"], counts["count"], strict=True)) == dict.fromkeys(DATES, ROWS_PER_DAY)
    operations = [r["operation"] for r in DeltaTable.forPath(spark, out).history().collect()]
    assert operations.count("WRITE") == 3


def test_secrets_never_reach_logs_or_mlflow_params(  # noqa: PLR0917 (pytest fixtures)
    spark, registry: Registry, input_path: str, tmp_path: Path, monkeypatch, caplog
) -> None:
    from mlflow import MlflowClient

    from batchscore.jobs import redact

    secret = "tok-9f8e7d6c5b4a"
    monkeypatch.setenv("BATCHSCORE_TEST_TOKEN", secret)
    out = f"{tmp_path}/out-{secret}"  # a secret that found its way into a path
    redact.install()
    with caplog.at_level(logging.INFO):
        logging.getLogger("batchscore.test").info(
            "connecting with %s to s3a://key:%s@bucket/x", secret, secret
        )
        result = run(spark, job_config(input_path, out), DS)
    logged = MlflowClient(registry.tracking_uri).get_run(result.job_run_id).data.params
    assert all(secret not in value for value in logged.values()) and "***" in logged["output"]
    text = "\n".join(handler_format(r) for r in caplog.records)
    assert secret not in text and "s3a://***@bucket/x" in text


def handler_format(record: logging.LogRecord) -> str:
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            f.filter(record)
    return record.getMessage()


def test_config_refuses_other_model_schemes_and_unsafe_identifiers() -> None:
    from pydantic import ValidationError

    from batchscore.jobs.tables import validate_column, validate_table_name

    base = job_config("in", "out").model_dump()
    for uri in ("file:///tmp/model", "s3://bucket/model", "http://host/model.pth"):
        with pytest.raises(ValidationError, match="expected a models:/ or runs:/ URI"):
            ScoringJobConfig.model_validate({**base, "model": {**base["model"], "uri": uri}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ScoringJobConfig.model_validate({**base, "quality": {"on_invalid": "quarantine", "typo": 1}})
    for name in ("db.t; DROP TABLE x", "t`", "a.b.c.d"):
        with pytest.raises(TableLocationError):
            validate_table_name(name)
    with pytest.raises(TableLocationError):
        validate_column("ds = '1' OR 1=1")


@pytest.mark.slow
def test_ten_million_rows(spark, registry: Registry, tmp_path: Path) -> None:
    """10 M rows through the job: every key scored exactly once, nothing quarantined."""
    from pyspark.sql import functions as F

    rows = 10_000_000
    source = spark.range(0, rows, numPartitions=8).select(
        F.col("id").alias("transaction_id"),
        F.lit(0).alias("label"),
        *[F.randn(seed=i).alias(f) for i, f in enumerate(FEATURES)],
        F.lit(DS).alias("ds"),
    )
    source.write.format("delta").partitionBy("ds").save(str(tmp_path / "input"))
    out = str(tmp_path / "out")
    result = run(spark, job_config(str(tmp_path / "input"), out, batch_size=16384), DS)
    assert result.rows_scored == rows and result.invalid_rows == 0
    written = spark.read.format("delta").load(out)
    stats = written.select(
        F.count(F.lit(1)).alias("n"),
        F.countDistinct("transaction_id").alias("keys"),
        F.min("transaction_id").alias("lo"),
        F.max("transaction_id").alias("hi"),
        F.count("fraud_score").alias("scored"),
    ).first()
    assert (stats["n"], stats["keys"], stats["lo"], stats["hi"], stats["scored"]) == (
        rows,
        rows,
        0,
        rows - 1,
        rows,
    )
