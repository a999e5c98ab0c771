"""The fast path: tasks read the Delta table's Parquet files themselves. Same rows as through Spark."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.jobs.errors import SchemaMismatchError
from batchscore.jobs.file_scan import FileScan
from batchscore.jobs.inputs import ScoringInput
from batchscore.jobs.score import run
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, job_config

NEEDED = ["transaction_id", "label", "ds", *(f"f{i}" for i in range(16))]


def _with_read_mode(cfg, mode: str):
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"read_mode": mode})})


def test_file_scan_lists_only_the_partition_files(spark, input_path: str, registry: Registry) -> None:
    cfg = job_config(input_path, "unused")
    scan, why = ScoringInput.open(spark, cfg.input, DATES[1]).file_scan(NEEDED)
    assert scan is not None, why
    assert scan.files and all(f"ds={DATES[1]}" in f for f in scan.files)
    assert scan.constants == {"ds": DATES[1]}
    assert "ds" not in scan.file_columns and "f0" in scan.file_columns
    whole, why = ScoringInput.open(spark, cfg.input, None).file_scan(NEEDED)
    assert whole is None and "'ds' is needed but not fixed by --ds" in why


def test_file_groups_are_balanced_contiguous_and_sized_by_bytes() -> None:
    files = tuple(f"part-{i:03d}.parquet" for i in range(41))
    gib = 1 << 30
    # 41 files of ~64 MiB = 2.6 GiB on 2 cores: 2 waves of 2 tasks of at most 1 GiB each.
    scan = FileScan(files, ("f0",), bytes_estimate=41 * (64 << 20))
    groups = scan.file_groups(parallelism=2, task_bytes=gib)
    assert len(groups) == 4
    assert [p for g in groups for p in g] == list(files)  # every file once, in order
    assert {len(g) for g in groups} == {10, 11}
    # Small inputs still use every core; never more tasks than files; no files -> one empty task.
    assert len(FileScan(files[:5], ("f0",), bytes_estimate=1000).file_groups(parallelism=8)) == 5
    assert len(FileScan(files, ("f0",), bytes_estimate=1000).file_groups(parallelism=8)) == 8
    assert FileScan((), ("f0",)).file_groups(parallelism=2) == [[]]


def test_files_and_dataframe_paths_write_the_same_rows(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    outputs = {}
    for mode in ("files", "dataframe"):
        out = str(tmp_path / mode)
        result = run(spark, _with_read_mode(job_config(input_path, out, batch_size=33), mode), DATES[1])
        assert result.rows_scored == ROWS_PER_DAY
        frame = spark.read.format("delta").load(out).drop("scored_at", "job_run_id").toPandas()
        outputs[mode] = frame.sort_values("transaction_id").reset_index(drop=True)
    files, frame = outputs["files"], outputs["dataframe"]
    assert list(files.columns) == list(frame.columns)
    non_score = [c for c in files.columns if c != "fraud_score"]
    assert files[non_score].equals(frame[non_score])
    assert_close(files[["fraud_score"]].to_numpy(), frame[["fraud_score"]].to_numpy(), rtol=1e-6)


def test_tables_with_deletion_vectors_are_read_through_spark(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    dv_path = str(tmp_path / "dv_input")
    source = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[2]}'")
    source.write.format("delta").option("delta.enableDeletionVectors", "true").partitionBy("ds").save(dv_path)
    spark.sql(f"DELETE FROM delta.`{dv_path}` WHERE transaction_id % 10 = 0")
    cfg = job_config(dv_path, str(tmp_path / "out"))
    scan, why = ScoringInput.open(spark, cfg.input, DATES[2]).file_scan(NEEDED)
    assert scan is None and "deletionVectors" in why
    # auto falls back to Spark, which honours the deletion vectors: the deleted rows stay deleted.
    result = run(spark, cfg, DATES[2])
    assert result.rows_scored == ROWS_PER_DAY - ROWS_PER_DAY // 10
    with pytest.raises(SchemaMismatchError, match=r"input\.read_mode is files but the Delta table uses"):
        run(spark, _with_read_mode(cfg, "files"), DATES[2])


@pytest.mark.parametrize("whole_bytes", [0, 96 << 20])
def test_read_files_gives_every_row_in_order_in_bounded_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole_bytes: int
) -> None:
    """Row groups read whole (small ones) or batch by batch (above the byte bound): the same rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchscore.udfs import file_reader

    monkeypatch.setattr(file_reader, "WHOLE_ROW_GROUP_BYTES", whole_bytes)
    paths = []
    for i, rows in enumerate((2500, 700)):
        data = pa.table({"key": np.arange(rows) + 10_000 * i, "f0": np.random.default_rng(i).random(rows)})
        paths.append((tmp_path / f"part-{i}.parquet").as_uri())
        pq.write_table(
            data.append_column("unused", pa.array(["x"] * rows)),
            tmp_path / f"part-{i}.parquet",
            row_group_size=1000,
        )
    batches = list(file_reader.read_files(iter(paths), ["key", "f0"], rows_per_batch=384))
    assert all(b.num_rows <= 384 and b.schema.names == ["key", "f0"] for b in batches)
    keys = pa.Table.from_batches(batches)["key"].to_pylist()
    assert keys == [*range(2500), *range(10_000, 10_700)]


def test_only_flat_row_groups_within_the_bound_are_read_whole(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchscore.udfs.file_reader import WHOLE_ROW_GROUP_BYTES, _read_whole, read_files

    path = tmp_path / "nested.parquet"
    data = pa.table({"key": list(range(50)), "emb": [[float(i)] * 4 for i in range(50)]})
    pq.write_table(data, path, row_group_size=20)
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert _read_whole(group, ["key"]) and not _read_whole(group, ["key", "emb"])
    assert group.total_byte_size < WHOLE_ROW_GROUP_BYTES
    batches = list(read_files(iter([path.as_uri()]), ["key", "emb"], rows_per_batch=8))
    table = pa.Table.from_batches(batches)
    assert table["key"].to_pylist() == list(range(50)) and table["emb"].to_pylist() == data["emb"].to_pylist()


def test_input_schema_comes_from_the_log_as_spark_reads_it(spark, tmp_path: Path) -> None:
    """A local Delta input's schema is read from its log, without Spark analysing the table, and equals the
    schema Spark reports: comments and NOT NULL kept, Delta's own field metadata (generation expressions,
    identity columns) left out, nested and decimal types, partition column in place."""
    from batchscore.jobs.errors import TableLocationError

    path = str(tmp_path / "typed")
    spark.sql(
        f"""CREATE TABLE delta.`{path}` (
            key BIGINT NOT NULL COMMENT 'the entity', id BIGINT GENERATED ALWAYS AS IDENTITY,
            f ARRAY<FLOAT>, s STRUCT<a: INT, b: STRING>, ts TIMESTAMP, d DECIMAL(10,2), code VARCHAR(8),
            g BIGINT GENERATED ALWAYS AS (key * 2), ds STRING NOT NULL) USING delta PARTITIONED BY (ds)"""
    )
    spark.sql(
        f"INSERT INTO delta.`{path}` (key, f, s, ts, d, code, ds) VALUES "
        "(1, array(1.0), named_struct('a', 1, 'b', 'x'), current_timestamp(), 1.5, 'ab', '2026-01-01')"
    )
    cfg = job_config(path, "unused")
    table = ScoringInput.open(spark, cfg.input, "2026-01-01")
    assert table.snapshot is not None and table._frame is None  # no DataFrame was built
    assert table.schema == spark.read.format("delta").load(path).schema
    assert table.frame.count() == 1  # built on first use, filtered to the partition
    assert ScoringInput.open(spark, cfg.input, "2026-01-02").frame.count() == 0
    with pytest.raises(TableLocationError, match=r"expected --ds as YYYY-MM-DD, found '2026-1-1'"):
        ScoringInput.open(spark, cfg.input, "2026-1-1")
    unpartitioned = cfg.input.model_copy(update={"partition_column": "day"})
    with pytest.raises(SchemaMismatchError, match=r"expected partition column 'day', found \['key', 'id'"):
        ScoringInput.open(spark, unpartitioned, "2026-01-01")
    missing = cfg.input.model_copy(update={"path": str(tmp_path / "nothing")})
    with pytest.raises(TableLocationError, match=r"expected an existing delta table, found none"):
        ScoringInput.open(spark, missing, "2026-01-01")
    # read_mode dataframe never replays the log: the input is read through Spark at once.
    through_spark = ScoringInput.open(
        spark, cfg.input.model_copy(update={"read_mode": "dataframe"}), "2026-01-01"
    )
    assert through_spark.snapshot is None and through_spark._frame is not None
