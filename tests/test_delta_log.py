"""The Delta log reader (jobs.delta_log) against Spark's own reading of the same tables."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from batchscore.jobs.delta_log import Snapshot, UnsupportedLogError, _checkpoint, read_snapshot
from batchscore.jobs.file_scan import local_snapshot, log_blockers, partition_uris
from batchscore.jobs.inputs import ScoringInput
from tests.conftest import DATES
from tests.helpers import job_config


def _paths(uris) -> set[str]:
    return {unquote(urlparse(u).path) for u in uris}


def _write(spark, path: str, ds: str, rows: int, mode: str = "append", **options: str) -> None:
    from pyspark.sql import functions as F

    df = spark.range(rows).select(
        F.col("id").alias("key"), F.rand(seed=rows).alias("f0"), F.lit(ds).alias("ds")
    )
    writer = df.repartition(2).write.format("delta").mode(mode).partitionBy("ds")
    for key, value in options.items():
        writer = writer.option(key, value)
    writer.save(path)


def _history(spark, path: str) -> None:
    """Appends, a partition replaced (its old files removed), a delete: 7 commits, checkpoints at 2, 4, 6."""
    _write(spark, path, DATES[0], 40, mode="overwrite", **{"delta.checkpointInterval": "2"})
    _write(spark, path, DATES[1], 30)
    _write(spark, path, DATES[2], 20)
    _write(spark, path, DATES[1], 10, mode="overwrite", replaceWhere=f"ds = '{DATES[1]}'")
    _write(spark, path, "2026 12 01", 5)  # a partition value that is URI-encoded in the log's paths
    spark.sql(f"DELETE FROM delta.`{path}` WHERE ds = '{DATES[2]}'")
    _write(spark, path, DATES[2], 7)


def test_snapshot_files_are_what_spark_reads(spark, tmp_path: Path) -> None:
    path = str(tmp_path / "history")
    _history(spark, path)
    log = Path(path) / "_delta_log"
    assert (log / "00000000000000000006.checkpoint.parquet").is_file()  # replayed from a checkpoint
    snapshot = read_snapshot(path)
    table = spark.read.format("delta").load(path)
    assert snapshot.version == 6
    assert snapshot.partition_columns == ("ds",)
    assert _paths(snapshot.uri(f) for f in snapshot.files) == _paths(table.inputFiles())
    for ds in (*DATES, "2026 12 01"):
        expected = table.where(f"ds = '{ds}'").inputFiles()
        assert _paths(partition_uris(snapshot, "ds", ds) or ()) == _paths(expected), ds
    assert sum(f.num_records or 0 for f in snapshot.files) == table.count() == 40 + 10 + 5 + 7
    # Without any checkpoint the commits alone give the same files.
    for checkpoint in log.glob("*.checkpoint*.parquet"):
        checkpoint.unlink()
    (log / "_last_checkpoint").unlink()
    assert {f.path for f in read_snapshot(path).files} == {f.path for f in snapshot.files}


def test_multi_part_checkpoints_are_replayed(spark, tmp_path: Path) -> None:
    path = str(tmp_path / "multipart")
    spark.conf.set("spark.databricks.delta.checkpoint.partSize", "3")
    try:
        _history(spark, path)
    finally:
        spark.conf.unset("spark.databricks.delta.checkpoint.partSize")
    parts = sorted((Path(path) / "_delta_log").glob("00000000000000000006.checkpoint.*.parquet"))
    assert len(parts) > 1
    table = spark.read.format("delta").load(path)
    assert _paths(read_snapshot(path).uri(f) for f in read_snapshot(path).files) == _paths(table.inputFiles())
    # An incomplete multi-part checkpoint is not used: the one before it and the later commits are.
    parts[0].unlink()
    assert _paths(read_snapshot(path).uri(f) for f in read_snapshot(path).files) == _paths(table.inputFiles())


def test_a_log_it_cannot_replay_exactly_is_refused(spark, tmp_path: Path) -> None:
    path = tmp_path / "gap"
    _write(spark, str(path), DATES[0], 10, mode="overwrite")
    _write(spark, str(path), DATES[1], 10)
    _write(spark, str(path), DATES[2], 10)
    (path / "_delta_log" / "00000000000000000001.json").unlink()
    with pytest.raises(UnsupportedLogError, match="commit 1 is missing after checkpoint -1"):
        read_snapshot(str(path))
    # A V2 checkpoint newer than any classic one; complete classic checkpoints only, at or below the latest.
    uuid = "3a0d65cd-4056-49b8-937b-95f9e3ee90e5"
    with pytest.raises(UnsupportedLogError, match="V2 checkpoint"):
        _checkpoint([f"{2:020d}.checkpoint.parquet", f"{4:020d}.checkpoint.{uuid}.json"], latest=5)
    names = [f"{2:020d}.checkpoint.parquet", f"{4:020d}.checkpoint.0000000001.0000000002.parquet"]
    assert _checkpoint(names, latest=5) == (2, [names[0]])
    assert _checkpoint([f"{6:020d}.checkpoint.parquet"], latest=5) == (-1, [])


def _snapshot(**overrides) -> Snapshot:
    fields = {
        "root": Path("/t"),
        "version": 0,
        "min_reader_version": 1,
        "reader_features": (),
        "writer_features": (),
        "partition_columns": ("ds",),
        "configuration": {},
        "schema": {"fields": [{"name": "ds", "type": "string"}]},
        "files": (),
    }
    return Snapshot(**{**fields, **overrides})


def test_blockers_name_what_makes_files_differ_from_rows() -> None:
    assert log_blockers(_snapshot()) == []
    assert log_blockers(_snapshot(min_reader_version=3, reader_features=("timestampNtz",))) == []
    assert log_blockers(_snapshot(min_reader_version=3, reader_features=("aFutureFeature",))) == [
        "aFutureFeature"
    ]
    assert log_blockers(_snapshot(min_reader_version=2)) == ["columnMapping"]
    assert log_blockers(_snapshot(configuration={"delta.columnMapping.mode": "name"})) == ["columnMapping"]
    assert log_blockers(_snapshot(writer_features=("rowTracking",))) == ["rowTracking"]
    # An integer partition column is not compared as a date string: listed through Spark instead.
    ints = _snapshot(schema={"fields": [{"name": "ds", "type": "integer"}]})
    assert partition_uris(ints, "ds", DATES[0]) is None


def test_column_mapped_local_tables_are_read_through_spark(spark, tmp_path: Path) -> None:
    path = str(tmp_path / "mapped")
    _write(spark, path, DATES[0], 10, mode="overwrite", **{"delta.columnMapping.mode": "name"})
    cfg = job_config(path, str(tmp_path / "out"))
    scan, why = ScoringInput.open(spark, cfg.input, DATES[0]).file_scan(["key", "f0"])
    assert scan is None and "columnMapping" in why
    # Copied elsewhere, the same table is still recognised (paths in its log are relative).
    shutil.copytree(path, tmp_path / "copy")
    assert log_blockers(read_snapshot(str(tmp_path / "copy"))) == ["columnMapping"]


def test_v2_checkpoint_tables_are_listed_through_spark(spark, tmp_path: Path) -> None:
    path = str(tmp_path / "v2")
    options = {"delta.checkpointPolicy": "v2", "delta.checkpointInterval": "1"}
    _write(spark, path, DATES[0], 10, mode="overwrite", **options)
    _write(spark, path, DATES[1], 10)
    cfg = job_config(path, str(tmp_path / "out"))
    snapshot, why = local_snapshot(cfg.input)
    assert snapshot is None and "V2 checkpoint" in why
    # Listed through Spark instead, the tasks still read the files themselves.
    df = spark.read.format("delta").load(path).where(f"ds = '{DATES[1]}'")
    scan, why = ScoringInput.open(spark, cfg.input, DATES[1]).file_scan(["key", "f0"])
    assert scan is not None and _paths(scan.files) == _paths(df.inputFiles()), why
    # The reader alone either refuses the log or reads exactly what Spark reads, never something else.
    try:
        direct = read_snapshot(path)
    except UnsupportedLogError as exc:
        assert "V2 checkpoint" in str(exc)
    else:
        table = spark.read.format("delta").load(path)
        assert _paths(direct.uri(f) for f in direct.files) == _paths(table.inputFiles())


def test_the_demo_input_gains_the_dates_it_lacks_and_is_otherwise_kept(spark, tmp_path: Path) -> None:
    """`make demo` scores yesterday: rerun on a later day, it must add that partition to the table it made."""
    from batchscore.jobs.demo import write_demo_input

    path = str(tmp_path / "transactions")
    write_demo_input(spark, path, 50, DATES[:2])
    write_demo_input(spark, path, 50, DATES)  # a day later: one more date
    table = spark.read.format("delta").load(path)
    counts = {r["ds"]: r["count"] for r in table.groupBy("ds").count().collect()}
    assert counts == dict.fromkeys(DATES, 50)
    assert table.select("transaction_id").distinct().count() == 150
    version = read_snapshot(path).version
    write_demo_input(spark, path, 50, DATES)  # nothing lacking: no new commit
    assert read_snapshot(path).version == version == 1
