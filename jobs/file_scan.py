"""Deciding whether tasks may read the input's files themselves (the fast path) and listing those files.

Eligible: a Delta table without deletion vectors or column mapping (the Parquet files then hold exactly the
table's rows and column names), whose partition columns the job needs are all fixed by ``--ds``. Otherwise
the job reads through Spark's DataFrame (``input.read_mode: auto`` falls back and logs why;
``files`` makes it an error).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jobs.errors import TableLocationError
from jobs.home import resolve_location
from jobs.tables import validate_table_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from jobs.config import InputSection

log = logging.getLogger(__name__)

# Table features under which a Parquet file alone does not give the table's rows or names.
_BLOCKING_FEATURES = ("deletionVectors", "columnMapping", "rowTracking", "typeWidening")


# A task reads about this many bytes of Parquet at most: big enough that Spark's per-task cost (tens of ms)
# is noise, small enough that a retried or straggling task redoes little.
TASK_BYTES = 1 << 30


@dataclass(frozen=True)
class FileScan:
    """The input's data files after partition pruning, and the partition values to add to their rows."""

    files: tuple[str, ...]
    file_columns: tuple[str, ...]
    constants: dict[str, Any] = field(default_factory=dict)
    bytes_estimate: int = 0  # the files' size, from the table's mean file size

    def task_count(self, parallelism: int, task_bytes: int = TASK_BYTES) -> int:
        """How many tasks read the files: at most ``task_bytes`` each, a multiple of ``parallelism`` (so the
        last wave keeps every core busy), never more than one per file."""
        parallelism = max(1, parallelism)
        waves = max(1, -(-self.bytes_estimate // (task_bytes * parallelism)))
        return max(1, min(len(self.files), waves * parallelism))

    def file_groups(self, parallelism: int, task_bytes: int = TASK_BYTES) -> list[list[str]]:
        """The files in :meth:`task_count` contiguous groups whose sizes differ by one file at most."""
        tasks = self.task_count(parallelism, task_bytes)
        base, extra = divmod(len(self.files), tasks)
        groups, start = [], 0
        for index in range(tasks):
            stop = start + base + (1 if index < extra else 0)
            groups.append(list(self.files[start:stop]))
            start = stop
        return groups


def _table_detail(spark: SparkSession, section: InputSection) -> dict[str, Any]:
    if section.table is not None:
        target = validate_table_name(section.table)
    else:
        location = resolve_location(section.path or "")
        if "`" in location:
            raise TableLocationError(f"input path must not contain a backtick, found {location!r}")
        target = f"delta.`{location}`"
    detail: dict[str, Any] = spark.sql(f"DESCRIBE DETAIL {target}").collect()[0].asDict()
    return detail


def plan_file_scan(
    spark: SparkSession,
    df: DataFrame,
    section: InputSection,
    ds: str | None,
    needed: Sequence[str],
    *,
    files: Sequence[str] | None = None,
) -> tuple[FileScan | None, str]:
    """``(scan, why)``: the file scan when the fast path is allowed, else ``None`` and the reason.
    ``files``: ``df.inputFiles()`` when the caller already listed them (listing takes a few 100 ms)."""
    if section.read_mode == "dataframe":
        return None, "input.read_mode is dataframe"
    if section.format != "delta":
        return None, f"input format is {section.format}, not delta"
    detail = _table_detail(spark, section)
    blocking = [f for f in detail.get("tableFeatures") or [] if f in _BLOCKING_FEATURES]
    if blocking:
        return None, f"the Delta table uses {blocking}"
    partition_columns = list(detail.get("partitionColumns") or [])
    constants: dict[str, Any] = {}
    for column in partition_columns:
        if column not in needed:
            continue
        if ds is None or column != section.partition_column:
            return None, f"partition column {column!r} is needed but not fixed by --ds"
        constants[column] = ds
    file_columns = tuple(c for c in needed if c not in partition_columns)
    files = tuple(df.inputFiles() if files is None else files)
    mean_file_bytes = int(detail.get("sizeInBytes") or 0) // max(1, int(detail.get("numFiles") or 0))
    scan = FileScan(files, file_columns, constants, bytes_estimate=mean_file_bytes * len(files))
    return scan, "plain Delta table"
