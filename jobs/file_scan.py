"""Deciding whether tasks may read the input's files themselves (the fast path) and listing those files.

Eligible: a Delta table without deletion vectors or column mapping (the Parquet files then hold exactly the
table's rows and column names), whose partition columns the job needs are all fixed by ``--ds``. Otherwise
the job reads through Spark's DataFrame (``input.read_mode: auto`` falls back and logs why;
``files`` makes it an error).

A table on the local file system is checked and listed from its own log (:mod:`jobs.delta_log`, a few ms);
any other (a catalog table, object storage) or a log that reader does not replay, through Spark
(``DESCRIBE DETAIL`` and the DataFrame's ``inputFiles()``: a query analysed and a file listing in the JVM).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from batchscore.jobs.delta_log import Snapshot, UnsupportedLogError, read_snapshot
from batchscore.jobs.home import resolve_location
from batchscore.jobs.tables import sql_target

if TYPE_CHECKING:
    from collections.abc import Callable

    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

    from batchscore.jobs.config import InputSection

log = logging.getLogger(__name__)

# Table features under which a Parquet file alone does not give the table's rows or names.
_BLOCKING_FEATURES = ("deletionVectors", "columnMapping", "rowTracking", "typeWidening")
# Reader features under which the Parquet files still hold exactly the table's rows and names; a table
# listed from its log with any other reader feature (e.g. one newer than this code) is read through Spark.
_READABLE_FEATURES = ("timestampNtz", "vacuumProtocolCheck", "variantType", "variantType-preview")
# Commits may wait outside the log's JSON files (in a catalog or _staged_commits) until backfilled.
_COORDINATED = ("catalogManaged", "catalogOwned-preview", "coordinatedCommits-preview")


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
    detail: dict[str, Any] = spark.sql(f"DESCRIBE DETAIL {sql_target(section)}").collect()[0].asDict()
    return detail


def local_snapshot(section: InputSection) -> tuple[Snapshot | None, str]:
    """The input's latest snapshot read from its log, when it is a path-based Delta table on the local file
    system whose log :mod:`jobs.delta_log` replays; else ``None`` and why."""
    if section.format != "delta" or section.table is not None or not section.path:
        return None, "not a path-based Delta table"
    location = resolve_location(section.path)
    if urlparse(location).scheme not in ("", "file"):
        return None, f"{location} is not on the local file system"
    try:
        snapshot = read_snapshot(location)
    except UnsupportedLogError as exc:
        return None, f"its log is read through Spark: {exc}"
    if "v2Checkpoint" in snapshot.reader_features:  # its checkpoints may keep file actions in sidecars
        return None, "its log is read through Spark: V2 checkpoints"
    coordinated = [f for f in (*snapshot.reader_features, *snapshot.writer_features) if f in _COORDINATED]
    if coordinated or any("coordinatedCommits" in key for key in snapshot.configuration):
        return None, f"its commits are coordinated ({coordinated or 'delta.coordinatedCommits'})"
    return snapshot, "read from its log"


def _without_delta_metadata(node: Any) -> Any:
    """A schema's JSON without Delta's own field metadata (``delta.generationExpression``,
    ``delta.identity.*``, ``delta.invariants``…), which Spark's Delta reader leaves out of the schema."""
    if isinstance(node, list):
        return [_without_delta_metadata(item) for item in node]
    if not isinstance(node, dict):
        return node
    cleaned = {key: _without_delta_metadata(value) for key, value in node.items()}
    if "name" in node and isinstance(node.get("metadata"), dict):
        cleaned["metadata"] = {k: v for k, v in node["metadata"].items() if not k.startswith("delta.")}
    return cleaned


def log_schema(snapshot: Snapshot) -> StructType:
    """The table's schema as ``spark.read.format("delta").load(...)`` reports it, from its log."""
    from pyspark.sql.types import StructType

    return StructType.fromJson(_without_delta_metadata(snapshot.schema))


def partition_uris(snapshot: Snapshot, column: str | None, ds: str | None) -> tuple[str, ...] | None:
    """The URIs of the files of partition ``column=ds`` (every file when ``ds`` is None); None when the
    partition column's values do not compare as ``YYYY-MM-DD`` strings (only string and date columns do)."""
    if ds is None:
        return tuple(snapshot.uri(f) for f in snapshot.files)
    if column not in snapshot.partition_columns or snapshot.column_type(column) not in ("string", "date"):
        return None
    return tuple(snapshot.uri(f) for f in snapshot.files if f.partition_values.get(column) == ds)


def _file_key(uri: str) -> str:
    """A file URI's decoded path: Spark writes ``file:/a%20b``, the log reader ``file:///a%20b``."""
    return unquote(urlparse(uri).path)


def log_blockers(snapshot: Snapshot) -> list[str]:
    """What in a snapshot makes its Parquet files differ from the table's rows or names."""
    features = (*snapshot.reader_features, *snapshot.writer_features)
    blocking = [f for f in dict.fromkeys(features) if f in _BLOCKING_FEATURES]
    blocking += [f for f in snapshot.reader_features if f not in (*_READABLE_FEATURES, *blocking)]
    mapping = snapshot.configuration.get("delta.columnMapping.mode", "none")
    if (snapshot.min_reader_version == 2 or mapping != "none") and "columnMapping" not in blocking:
        blocking.append("columnMapping")
    if any(f.deletion_vector for f in snapshot.files) and "deletionVectors" not in blocking:
        blocking.append("deletionVectors")
    return blocking


def plan_file_scan(
    spark: SparkSession,
    section: InputSection,
    ds: str | None,
    needed: Sequence[str],
    *,
    snapshot: Snapshot | None,
    list_files: Callable[[], Sequence[str]],
) -> tuple[FileScan | None, str]:
    """``(scan, why)``: the file scan when the fast path is allowed, else ``None`` and the reason.
    ``snapshot``: the one the input's schema came from, if any, so that schema and files are of the same
    version. ``list_files``: the input's files as Spark lists them, called only when the table's log does
    not list them here."""
    if section.read_mode == "dataframe":
        return None, "input.read_mode is dataframe"
    if section.format != "delta":
        return None, f"input format is {section.format}, not delta"
    if snapshot is None:
        snapshot, _ = local_snapshot(section)
    if snapshot is not None:
        blocking = log_blockers(snapshot)
        partition_columns = list(snapshot.partition_columns)
        listed = partition_uris(snapshot, section.partition_column, ds)
        sizes = {_file_key(snapshot.uri(f)): f.size for f in snapshot.files}
    else:
        detail = _table_detail(spark, section)
        blocking = [f for f in detail.get("tableFeatures") or [] if f in _BLOCKING_FEATURES]
        partition_columns = list(detail.get("partitionColumns") or [])
        listed, sizes = None, {}
    if blocking:
        return None, f"the Delta table uses {blocking}"
    constants: dict[str, Any] = {}
    for column in partition_columns:
        if column not in needed:
            continue
        if ds is None or column != section.partition_column:
            return None, f"partition column {column!r} is needed but not fixed by --ds"
        constants[column] = ds
    file_columns = tuple(c for c in needed if c not in partition_columns)
    if listed is None:
        listed = tuple(list_files())
    if sizes and all(_file_key(f) in sizes for f in listed):
        bytes_estimate = sum(sizes[_file_key(f)] for f in listed)
    else:
        detail = detail if snapshot is None else _table_detail(spark, section)
        mean_file_bytes = int(detail.get("sizeInBytes") or 0) // max(1, int(detail.get("numFiles") or 0))
        bytes_estimate = mean_file_bytes * len(listed)
    scan = FileScan(tuple(listed), file_columns, constants, bytes_estimate=bytes_estimate)
    return scan, "plain Delta table" + (", listed from its log" if snapshot is not None else "")
