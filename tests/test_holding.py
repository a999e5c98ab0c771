"""``quality.hold``: a run that reads its scored rows more than once keeps them by Spark's cache
(``persist``) or by a staging Delta table of its own (``stage``, what Spark Connect and Databricks
serverless get by default); both give the same tables, and a staging table never outlives its run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from batchscore.jobs.errors import InvalidInputError
from batchscore.jobs.score import run
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import job_config, with_bad_rows, with_sections

DS = DATES[0]
BAD = {2: ("f1", None), 9: ("f4", math.nan)}


def _rows(spark, path: str, *columns: str) -> list[tuple]:
    return sorted(tuple(r) for r in spark.read.format("delta").load(path).select(*columns).collect())


def test_stage_writes_what_persist_writes_and_leaves_no_staging_table(
    spark, registry: Registry, input_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow import MlflowClient

    path = with_bad_rows(spark, input_path, tmp_path, BAD, DS)
    persisted = with_sections(job_config(path, str(tmp_path / "persist")), quality={"hold": "persist"})
    staged = with_sections(job_config(path, str(tmp_path / "stage")), quality={"hold": "stage"})
    assert run(spark, persisted, DS).invalid_rows == 2
    with caplog.at_level("INFO", logger="batchscore"):
        result = run(spark, staged, DS)
    assert (result.rows_scored, result.invalid_rows) == (ROWS_PER_DAY - 2, 2)
    assert f"staging the scored rows in path {tmp_path / 'stage_staging'}/run={result.job_run_id}/0" in (
        caplog.text
    )
    columns = ("transaction_id", "fraud_score", "model_version", "ds")
    assert _rows(spark, str(tmp_path / "stage"), *columns) == _rows(
        spark, str(tmp_path / "persist"), *columns
    )
    quarantined = ("transaction_id", "reason", "raw_row")
    assert _rows(spark, str(tmp_path / "stage_quarantine"), *quarantined) == _rows(
        spark, str(tmp_path / "persist_quarantine"), *quarantined
    )
    assert not (tmp_path / "stage_staging").exists()
    # The workers' stats come from the one scoring pass (the staging write), as with persist.
    metrics = MlflowClient(registry.tracking_uri).get_run(result.job_run_id).data.metrics
    assert metrics["scoring_workers"] >= 1 and metrics["model_batches"] >= 1  # loads: 0 in a reused worker
    assert metrics["invalid_rows"] == 2 and metrics["rows_scored"] == ROWS_PER_DAY - 2


def test_a_failing_staged_run_writes_nothing_and_removes_its_staging_table(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    bad = {row: ("f2", math.nan) for row in range(0, 40, 4)}  # 10 of 400 = 2.5% > 1%
    path = with_bad_rows(spark, input_path, tmp_path, bad, DS)
    cfg = with_sections(job_config(path, str(tmp_path / "out")), quality={"hold": "stage"})
    with pytest.raises(InvalidInputError, match=r"10 of 400 input rows \(2\.50%\) are invalid"):
        run(spark, cfg, DS)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out_quarantine").exists()
    assert not (tmp_path / "out_staging").exists()


def test_stage_with_catalog_tables_drops_the_runs_staging_table(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    name = f"scores_{tmp_path.name[-6:].replace('-', '_')}".lower()
    cfg = with_sections(
        job_config(input_path, "unused"),
        output={"path": None, "table": name},
        quality={"hold": "stage"},
    )
    try:
        result = run(spark, cfg, DS)
        assert result.rows_scored == ROWS_PER_DAY
        assert spark.table(name).where(f"ds = '{DS}'").count() == ROWS_PER_DAY
        leftovers = [t.name for t in spark.catalog.listTables() if t.name.startswith(f"{name}_staging")]
        assert leftovers == []
    finally:
        for table in (name, f"{name}_quarantine"):
            spark.sql(f"DROP TABLE IF EXISTS {table}")
