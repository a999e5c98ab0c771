"""Inputs: what a job scores, as one :class:`ScoringInput` that every job and the notebook API build alike.

A job's input is one partition of a Delta or Parquet table (``--ds``) or the whole table; the notebook API's
is a DataFrame. A :class:`ScoringInput` knows its schema at once, its DataFrame only once something reads
through Spark, its partition's files, and whether the tasks may read those files themselves
(:func:`jobs.file_scan.plan_file_scan`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from batchscore.jobs.errors import MissingPartitionError, SchemaMismatchError, TableLocationError
from batchscore.jobs.file_scan import (
    FileScan,
    local_snapshot,
    log_blockers,
    log_schema,
    partition_uris,
    plan_file_scan,
)
from batchscore.jobs.tables import read_table, validate_ds

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from batchscore.jobs.config import InputSection


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


class ScoringInput:
    """The rows one run scores: a table's partition (:meth:`open`) or a DataFrame (:meth:`of_frame`).

    Building ``spark.read...load(...).where(...)`` makes the JVM resolve and analyse the table. When the
    driver has replayed a local Delta table's log (``snapshot``), the schema comes from that log, and a job
    whose tasks read the files themselves never builds the DataFrame. Without a schema the DataFrame is
    read at once, so a missing table fails before anything else runs.
    """

    def __init__(
        self,
        spark: SparkSession,
        section: InputSection | None,
        ds: str | None = None,
        *,
        schema: StructType | None = None,
        snapshot: Any = None,
        frame: DataFrame | None = None,
    ) -> None:
        self.spark = spark
        self.section = section
        self.ds = ds
        self.snapshot = snapshot  # the jobs.delta_log.Snapshot the schema came from, if any
        self._frame = frame
        self._files: tuple[str, ...] | None = None
        if schema is None:
            schema = self.frame.schema
        elif section is not None:
            check_partition_column(section, ds, schema.names)
        self.schema: StructType = schema

    @classmethod
    def open(cls, spark: SparkSession, section: InputSection, ds: str | None) -> ScoringInput:
        """A job's input. A local Delta table whose files the tasks may read gets its schema from its log;
        any other input is read through Spark at once (:func:`read_input`)."""
        if section.read_mode != "dataframe":
            try:
                snapshot, _ = local_snapshot(section)
            except TableLocationError:  # no table there: read_input names what was expected and found
                snapshot = None
            if snapshot is not None and not log_blockers(snapshot):
                return cls(spark, section, ds, schema=log_schema(snapshot), snapshot=snapshot)
        return cls(spark, section, ds)

    @classmethod
    def of_frame(cls, df: DataFrame) -> ScoringInput:
        """A DataFrame as an input (the notebook API): read through Spark, on the DataFrame's session."""
        return cls(df.sparkSession, None, frame=df)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    @property
    def frame(self) -> DataFrame:
        """The input rows as a DataFrame (filtered to ``ds``), read on first use."""
        if self._frame is None:
            assert self.section is not None
            self._frame = read_input(self.spark, self.section, self.ds)
        return self._frame

    @property
    def read_mode(self) -> str:
        return self.section.read_mode if self.section is not None else "dataframe"

    @property
    def partition_column(self) -> str | None:
        return self.section.partition_column if self.section is not None else None

    def describe(self) -> str:
        return self.section.describe() if self.section is not None else "the DataFrame"

    def partition_files(self) -> tuple[str, ...]:
        """The data files of partition ``ds`` (every file without one), listed once. Fails with the nearest
        partitions when the partition has none at all (an upstream job did not run); a partition whose
        files hold no rows is scored as empty."""
        if self._files is None:
            self._files = self._list_files()
        return self._files

    def _list_files(self) -> tuple[str, ...]:
        section, ds = self.section, self.ds
        if section is None or ds is None:
            return tuple(self.frame.inputFiles())
        snapshot = self.snapshot
        if snapshot is None:
            snapshot, _ = local_snapshot(section)  # a local Delta table: listed from its log, in milliseconds
        column = section.partition_column
        listed = partition_uris(snapshot, column, ds) if snapshot is not None else None
        if listed is not None:
            files = listed
        elif section.format == "parquet" and column is not None:  # Spark lists every file of a Parquet input
            files = partition_of(self.frame.inputFiles(), column, ds)
        else:
            files = tuple(self.frame.inputFiles())
        if files:
            return files
        if snapshot is not None:
            values = {v for f in snapshot.files if (v := f.partition_values.get(column)) is not None}
            found = sorted(str(v) for v in values)
        else:
            whole = read_table(self.spark, section, section.format)
            pattern = re.compile(rf"/{column}=([^/]+)/")
            found = sorted({m.group(1) for f in whole.inputFiles() if (m := pattern.search(f))})
        raise MissingPartitionError(
            f"input {section.describe()} has no partition {column}={ds}; "
            f"latest partitions: {found[-5:] or 'none'}"
        )

    def file_scan(self, needed: Sequence[str]) -> tuple[FileScan | None, str]:
        """``(scan, why)``: the files the tasks read themselves when the input allows it (only the
        ``needed`` columns), else ``None`` and the reason."""
        if self.section is None:
            return None, "the input is a DataFrame"
        return plan_file_scan(
            self.spark,
            self.section,
            self.ds,
            needed,
            snapshot=self.snapshot,
            list_files=self.partition_files,
        )
