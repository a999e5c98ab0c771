"""Writing outputs: partitioned Delta writes without Spark's sort by the partition columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchscore.jobs.config import TableSection
from batchscore.jobs.outputs import CONCURRENT_WRITERS, unsorted_partition_writes, write_idempotent


def _write_stages_peak_memory(spark: Any, group: str) -> list[int]:
    """Peak execution memory of each stage the job group ran (a sort holds its rows there; a write that
    streams its rows to one file holds none). Read from Spark's status store through py4j."""
    context = spark.sparkContext
    store = context._jsc.sc().statusStore()
    tracker = context.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup(group) for s in tracker.getJobInfo(j).stageIds]
    return [int(store.lastStageAttempt(s).peakExecutionMemory()) for s in stages]


def _rows(spark: Any, days: list[str], per_day: int) -> Any:
    """One task's rows, days interleaved row by row (what makes a partitioned write sort or switch)."""
    from pyspark.sql import functions as F

    count = len(days) * per_day
    day = F.element_at(F.array(*(F.lit(d) for d in days)), (F.col("id") % len(days) + 1).cast("int"))
    return spark.range(0, count, 1, 1).select(
        F.col("id").alias("key"), (F.col("id") * 0.5).alias("score"), day.alias("ds")
    )


def test_one_partition_is_written_without_sorting_its_rows(spark, tmp_path: Path) -> None:
    from pyspark.sql import functions as F

    df = spark.range(0, 50_000, 1, 2).select(F.col("id").alias("key"), F.lit("2026-11-27").alias("ds"))
    section = TableSection(path=str(tmp_path / "out"), partition_column="ds")
    context = spark.sparkContext
    try:
        # Control: Spark's own partitioned write sorts, and the probe sees the sort's memory.
        context.setJobGroup("plain-write", "plain partitioned write")
        df.write.format("delta").partitionBy("ds").save(str(tmp_path / "plain"))
        context.setJobGroup("our-write", "write_idempotent")
        write_idempotent(df, section, "2026-11-27", commit_tag="t1")
    finally:
        context._jsc.clearJobGroup()
    assert max(_write_stages_peak_memory(spark, "plain-write")) > 0
    ours = _write_stages_peak_memory(spark, "our-write")
    assert ours and max(ours) == 0
    assert spark.read.format("delta").load(section.path).count() == 50_000
    assert spark.conf.get(CONCURRENT_WRITERS) == "0", "the session's setting is restored"


def test_rows_of_many_partitions_in_one_task_each_land_once_in_their_partition(spark, tmp_path: Path) -> None:
    days = ["2026-11-27", "2026-11-28", "2026-11-29"]
    df = _rows(spark, days, 2_000)
    section = TableSection(path=str(tmp_path / "out"), partition_column="ds")
    write_idempotent(df, section, None, commit_tag="t1")  # dynamic overwrite: every day of df
    written = spark.read.format("delta").load(section.path)
    assert written.count() == 6_000
    assert written.exceptAll(df).count() == 0 and df.exceptAll(written).count() == 0
    for day in days:  # a day's rows are read back from its own partition directory
        files = {r[0] for r in written.where(f"ds = '{day}'").selectExpr("input_file_name()").collect()}
        assert files and all(f"ds={day}" in f for f in files)


def test_a_sessions_own_concurrent_writers_setting_stands_and_ours_is_undone(spark) -> None:
    with unsorted_partition_writes(spark):
        assert spark.conf.get(CONCURRENT_WRITERS) == "1"
    assert spark.conf.get(CONCURRENT_WRITERS) == "0"
    spark.conf.set(CONCURRENT_WRITERS, "8")
    try:
        with unsorted_partition_writes(spark):
            assert spark.conf.get(CONCURRENT_WRITERS) == "8"
        assert spark.conf.get(CONCURRENT_WRITERS) == "8"
    finally:
        spark.conf.unset(CONCURRENT_WRITERS)
    with pytest.raises(RuntimeError), unsorted_partition_writes(spark):
        raise RuntimeError("a failed write")
    assert spark.conf.get(CONCURRENT_WRITERS) == "0"
