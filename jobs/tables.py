"""Reading job inputs and writing outputs idempotently, one partition per Delta commit."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from jobs.errors import ConcurrentWriteError, SchemaMismatchError, TableLocationError
from jobs.home import resolve_location
from jobs.names import COLUMN_NAME, TABLE_NAME

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from jobs.config import InputSection, TableSection

log = logging.getLogger(__name__)


def validate_table_name(name: str) -> str:
    if not TABLE_NAME.match(name):
        raise TableLocationError(f"expected a table name like [catalog.][schema.]table, found {name!r}")
    return name


def validate_column(name: str) -> str:
    if not COLUMN_NAME.match(name):
        raise TableLocationError(f"expected a column name of letters, digits and '_', found {name!r}")
    return name


def validate_ds(ds: str) -> str:
    """A partition date must be ``YYYY-MM-DD``; it is used in a Delta ``replaceWhere`` predicate."""
    try:
        dt.date.fromisoformat(ds)
    except ValueError:
        raise TableLocationError(f"expected --ds as YYYY-MM-DD, found {ds!r}") from None
    if len(ds) != 10:
        raise TableLocationError(f"expected --ds as YYYY-MM-DD, found {ds!r}")
    return ds


def read_table(spark: SparkSession, section: TableSection, data_format: str = "delta") -> DataFrame:
    """The table a config section names, by catalog name or by location."""
    if section.table is not None:
        return spark.read.table(validate_table_name(section.table))
    assert section.path is not None
    return spark.read.format(data_format).load(resolve_location(section.path))


def check_partition_column(section: InputSection, ds: str | None, columns: Sequence[str]) -> str | None:
    """The input's partition column when ``ds`` picks a partition (None without ``ds``); an error when the
    config names none or the table lacks it."""
    if ds is None:
        return None
    column = section.partition_column
    if column is None:
        raise TableLocationError("--ds was given but input.partition_column is not set")
    if column not in columns:
        raise SchemaMismatchError(
            f"input {section.describe()}: expected partition column {column!r}, found {list(columns)}"
        )
    validate_ds(ds)
    return column


def read_input(spark: SparkSession, section: InputSection, ds: str | None) -> DataFrame:
    """The input rows, filtered to partition ``ds`` when one is given (pushed down as a partition filter)."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    try:
        df = read_table(spark, section, section.format)
    except AnalysisException as exc:
        reason = " ".join(str(exc).split("\n")[0].split())[:300]
        raise TableLocationError(
            f"input {section.describe()}: expected an existing {section.format} table, found none ({reason})"
        ) from None
    column = check_partition_column(section, ds, df.columns)
    if column is not None:
        df = df.where(F.col(column) == F.lit(ds))
    return _partition_as_string(df, section)


def _partition_as_string(df: DataFrame, section: InputSection) -> DataFrame:
    """A Parquet input's partition column as the string its directory names hold (``ds=2026-01-05``).

    Spark infers a type for Parquet partition values (a date here); a Delta table declares one. So that
    the output's partition column does not depend on the input's format, an inferred type is undone.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    column = section.partition_column
    if section.format != "parquet" or column is None or column not in df.columns:
        return df
    kind = df.schema[column].dataType
    if isinstance(kind, T.StringType):
        return df
    value = F.date_format(column, "yyyy-MM-dd") if isinstance(kind, T.DateType) else F.col(column)
    return df.withColumn(column, value.cast("string"))


def partition_of(files: Sequence[str], column: str, ds: str) -> tuple[str, ...]:
    """The files of Hive-style partition ``column=ds`` (``…/ds=2026-01-05/part-0.parquet``)."""
    segment = f"/{column}={ds}/"
    return tuple(f for f in files if segment in f)


class TableInput:
    """A job's input for one run: its schema at once, its DataFrame only once something reads through Spark.

    Building ``spark.read...load(...).where(...)`` makes the JVM resolve and analyse the table (20-30 ms a
    job on 2 cores). When the driver has already replayed a local Delta table's log (``snapshot``), the
    schema comes from that log, and a job whose tasks read the files themselves never builds the DataFrame.
    Without a schema the DataFrame is read at once, so a missing table fails before anything else runs.
    """

    def __init__(
        self,
        spark: SparkSession,
        section: InputSection,
        ds: str | None,
        schema: StructType | None = None,
        snapshot: Any = None,
    ) -> None:
        self.spark = spark
        self.section = section
        self.ds = ds
        self.snapshot = snapshot  # the jobs.delta_log.Snapshot the schema came from, if any
        self._frame: DataFrame | None = None
        if schema is None:
            self._frame = read_input(spark, section, ds)
            schema = self._frame.schema
        else:
            check_partition_column(section, ds, schema.names)
        self.schema: StructType = schema

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @property
    def frame(self) -> DataFrame:
        """The input rows as a DataFrame (filtered to ``ds``), read on first use."""
        if self._frame is None:
            self._frame = read_input(self.spark, self.section, self.ds)
        return self._frame


def frame_of(df: DataFrame | TableInput) -> DataFrame:
    """The DataFrame of a job input or of a DataFrame (itself)."""
    return df.frame if isinstance(df, TableInput) else df


def sql_target(section: TableSection) -> str:
    """The table of ``section`` as SQL names it: its catalog name, or ``delta.`<path>```."""
    if section.table is not None:
        return validate_table_name(section.table)
    location = resolve_location(section.path or "")
    if "`" in location:
        raise TableLocationError(f"expected a table path without backticks, found {location!r}")
    return f"delta.`{location}`"


def table_exists(spark: SparkSession, section: TableSection) -> bool:
    """Whether the Delta table of ``section`` exists (by catalog name or at its path)."""
    from delta.tables import DeltaTable

    if section.table is not None:
        return bool(spark.catalog.tableExists(validate_table_name(section.table)))
    return bool(DeltaTable.isDeltaTable(spark, resolve_location(section.path or "")))


# Before a partitioned write Spark sorts each task's rows by the partition columns, even when every row
# carries the same value, as a nightly run's `ds` does: sorting (and spilling to disk) that one constant
# made the Delta write of 10 M scored rows 22-32% slower. Allowed a concurrent writer, a task writes its
# first partition's rows as they come and sorts only the rest of its rows if it meets a second partition.
CONCURRENT_WRITERS = "spark.sql.maxConcurrentOutputFileWriters"


@contextmanager
def unsorted_partition_writes(spark: SparkSession) -> Iterator[None]:
    """Partitioned writes inside skip Spark's sort while a task meets one partition value
    (:data:`CONCURRENT_WRITERS` is 1 meanwhile, unless the session has its own setting, which stands).
    The setting is the session's: a query another thread of it plans meanwhile writes the same way, with
    the same result and no more memory (one open file per task, as when sorted)."""
    current = spark.conf.get(CONCURRENT_WRITERS)
    if current not in (None, "0"):
        yield
        return
    spark.conf.set(CONCURRENT_WRITERS, "1")
    try:
        yield
    finally:
        spark.conf.set(CONCURRENT_WRITERS, current or "0")


def write_idempotent(
    df: DataFrame,
    section: TableSection,
    ds: str | None,
    commit_tag: str,
    stats_columns: Sequence[str] = (),
    *,
    merge_schema: bool = False,
) -> None:
    """Write ``df`` so that a rerun replaces exactly what the previous run of the same ``ds`` wrote.

    With ``ds``: Delta ``replaceWhere`` on that partition — one commit that removes the partition's old
    files and adds the new ones; other partitions are untouched. Without ``ds``: dynamic partition
    overwrite (every partition present in ``df`` is replaced). ``commit_tag`` goes into the commit's
    ``userMetadata`` so the job can find its own commit in the table history.

    A table this creates collects file statistics on ``stats_columns`` only
    (``delta.dataSkippingStatsColumns``): statistics on every column, Delta's default, made the write cost
    ~40% more for lineage columns no query can skip on. Rows are written unsorted
    (:func:`unsorted_partition_writes`). A commit that conflicts with another job's is a
    :class:`~jobs.errors.ConcurrentWriteError`, with nothing of this write committed; one that lost the
    race to create a new table is written again into the table the other job created.
    """
    column = section.partition_column
    if ds is not None and column is None:
        raise TableLocationError(
            f"output {section.describe()}: --ds was given but output.partition_column is not set; "
            "refusing to overwrite the whole table with one partition's rows"
        )
    new_table = not table_exists(df.sparkSession, section)
    writer = df.write.format("delta").mode("overwrite").option("userMetadata", commit_tag)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if stats_columns and new_table:  # Delta reads the option only when it creates the table
        names = ",".join(validate_column(c) for c in stats_columns)
        writer = writer.option("delta.dataSkippingStatsColumns", names)
    if column is not None:
        writer = writer.partitionBy(validate_column(column))
        if ds is not None:
            writer = writer.option("replaceWhere", f"`{column}` = '{validate_ds(ds)}'")
        else:
            writer = writer.option("partitionOverwriteMode", "dynamic")
    where = f" partition {column}={ds} of" if ds is not None else ""
    with (
        unsorted_partition_writes(df.sparkSession),
        concurrent_writes_refused(f"{where} {section.describe()}"),
    ):
        try:
            _save(writer, section)
        except Exception as exc:
            # Two jobs writing their first partitions of a new table at once both try to create it in
            # their data commit, and one loses (ProtocolChangedException) with nothing committed. Its
            # partition is another one, so writing it again into the table the other job made is safe.
            if not (new_table and _CONFLICT.search(str(exc)) and table_exists(df.sparkSession, section)):
                raise
            log.info("%s was created by a concurrent job; writing%s it again", section.describe(), where)
            _save(writer, section)


def _save(writer: Any, section: TableSection) -> None:
    if section.table is not None:
        writer.saveAsTable(validate_table_name(section.table))
    else:
        assert section.path is not None
        writer.save(resolve_location(section.path))


# Delta's optimistic concurrency control: another transaction committed something this one conflicts with.
_CONFLICT = re.compile(
    r"(Concurrent(Append|DeleteRead|DeleteDelete|Transaction|Write)Exception|ProtocolChangedException|"
    r"MetadataChangedException|DELTA_CONCURRENT_\w+|DELTA_PROTOCOL_CHANGED|DELTA_METADATA_CHANGED)"
)


def _conflict_message(where: str, exc: BaseException) -> str:
    found = _CONFLICT.search(str(exc))
    kind = found.group(1) if found else type(exc).__name__
    return (
        f"another job committed to{where} while this run was writing it ({kind}); this run's rows were "
        "not committed there. Rerun the job once the other has finished: a rerun replaces the partition "
        "exactly"
    )


# Delta refusing rows whose schema or partitioning differs from the existing table's.
_SCHEMA_REFUSED = re.compile(r"\[(DELTA_[A-Z_]*MISMATCH[A-Z_]*|DELTA_FAILED_TO_MERGE_FIELDS)\]")


@contextmanager
def concurrent_writes_refused(where: str) -> Iterator[None]:
    """A Delta write that lost a race to a concurrent commit, as one :class:`ConcurrentWriteError`; one
    that the existing table refuses for its schema, as one :class:`SchemaMismatchError`."""
    try:
        yield
    except Exception as exc:
        if _CONFLICT.search(str(exc)):
            raise ConcurrentWriteError(_conflict_message(where, exc)) from None
        refused = _SCHEMA_REFUSED.search(str(exc))
        if refused is None:
            raise
        first = " ".join(str(exc)[refused.start() :].split("\n")[0].split())[:400]
        raise SchemaMismatchError(
            f"writing{where}: the existing table does not take this run's columns, nothing was committed: "
            f"{first}. Expected the table this job wrote before; point the job at a new table, or migrate it"
        ) from None


def committed_rows(spark: SparkSession, section: TableSection, commit_tag: str, ds: str | None = None) -> int:
    """Rows written by the commit tagged ``commit_tag`` (Delta's own ``numOutputRows``, without a rescan).

    A replace of an empty partition by no rows makes no commit at all: then, or when the tagged commit is
    no longer among the last :data:`HISTORY_DEPTH` (busy concurrent writers), the rows of ``ds`` that carry
    the tag as their ``job_run_id`` are counted instead.
    """
    from pyspark.sql import functions as F

    history = spark.sql(f"DESCRIBE HISTORY {sql_target(section)} LIMIT {HISTORY_DEPTH}")
    for row in history.where(F.col("userMetadata") == F.lit(commit_tag)).select("operationMetrics").collect():
        return int((row["operationMetrics"] or {}).get("numOutputRows", 0))
    rows = read_table(spark, section).where(F.col("job_run_id") == F.lit(commit_tag))
    if ds is not None and section.partition_column:
        rows = rows.where(F.col(section.partition_column) == F.lit(ds))
    return int(rows.count())


HISTORY_DEPTH = 50
