"""Outputs: every table a job writes (scores, quarantine, shadow scores, comparison rows) through
:func:`write_idempotent`, one Delta commit per partition, names checked and commits tagged with the job run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from batchscore.jobs.compare import METRIC_COLUMNS
from batchscore.jobs.errors import (
    ConcurrentWriteError,
    InvalidInputError,
    SchemaMismatchError,
    TableLocationError,
)
from batchscore.jobs.home import resolve_location
from batchscore.jobs.tables import (
    read_table,
    sql_name,
    sql_string,
    sql_target,
    table_exists,
    validate_column,
    validate_ds,
    validate_table_name,
)
from batchscore.udfs.validation import RAW_COLUMN, REASON_COLUMN

if TYPE_CHECKING:
    from pathlib import Path

    from pyspark.sql import DataFrame, SparkSession

    from batchscore.jobs.compare import Comparison
    from batchscore.jobs.config import ScoringJobConfig, ShadowSection, TableSection
    from batchscore.udfs.spec import ModelRef

log = logging.getLogger(__name__)

# Before a partitioned write Spark sorts each task's rows by the partition columns, even when every row
# carries the same value, as a nightly run's `ds` does, and that sort (and its spill) is a large part of
# the write. Allowed a concurrent writer, a task writes its first partition's rows as they come and sorts
# only the rest of its rows if it meets a second partition.
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
    match: Mapping[str, str | None] | None = None,
) -> None:
    """Write ``df`` so that a rerun replaces exactly what the previous run of the same ``ds`` wrote.

    With ``ds``: Delta ``replaceWhere`` on that partition — one commit that removes the partition's old
    rows and adds the new ones; other partitions are untouched. ``match`` narrows what is replaced to the
    rows with those column values as well (the comparison table's model pair). Without either: dynamic
    partition overwrite (every partition present in ``df`` is replaced). ``commit_tag`` goes into the
    commit's ``userMetadata`` so the job can find its own commit in the table history.

    A table this creates collects file statistics on ``stats_columns`` only
    (``delta.dataSkippingStatsColumns``): statistics on every column, Delta's default, cost the write a lot
    for lineage columns no query skips on. Rows are written unsorted (:func:`unsorted_partition_writes`). A
    commit that conflicts with another job's is a :class:`~jobs.errors.ConcurrentWriteError`, with nothing
    of this write committed; one that lost the race to create a new table is written again into the table
    the other job created.
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
    conditions = [f"`{column}` = '{validate_ds(ds)}'"] if ds is not None else []
    for name, value in (match or {}).items():
        target = sql_name(validate_column(name))
        conditions.append(f"{target} IS NULL" if value is None else f"{target} = {sql_string(value)}")
    if column is not None:
        writer = writer.partitionBy(validate_column(column))
    if conditions:
        writer = writer.option("replaceWhere", " AND ".join(conditions))
    elif column is not None:
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


HISTORY_DEPTH = 50


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


def count_invalid(scored: DataFrame, cfg: ScoringJobConfig) -> tuple[int, int]:
    """``(rows, invalid rows)`` of the scored rows (one pass, from the persisted result); above
    ``quality.max_invalid_fraction`` an :class:`InvalidInputError`, before anything is written."""
    from pyspark.sql import functions as F

    counts = scored.select(F.count(F.lit(1)).alias("rows"), F.count(REASON_COLUMN).alias("invalid")).first()
    total, invalid = (int(counts["rows"]), int(counts["invalid"])) if counts else (0, 0)
    limit = cfg.quality.max_invalid_fraction
    if total and invalid / total > limit:
        sample = scored.where(F.col(REASON_COLUMN).isNotNull()).select(REASON_COLUMN).limit(3).collect()
        raise InvalidInputError(
            f"{invalid} of {total} input rows ({invalid / total:.2%}) are invalid, above "
            f"quality.max_invalid_fraction={limit:g}; nothing was written. First reasons: "
            + "; ".join(repr(r[0]) for r in sample)
        )
    return total, invalid


def write_quarantine(
    scored: DataFrame, cfg: ScoringJobConfig, ds: str | None, job_run_id: str, invalid: int
) -> None:
    """Replace the quarantine partition with this run's ``invalid`` rows of ``scored`` (with lineage); a
    rerun with none clears what an earlier run left there."""
    from pyspark.sql import functions as F

    quarantine = cfg.quarantine_section()
    if invalid or table_exists(scored.sparkSession, quarantine):
        partition = [cfg.output.partition_column] if cfg.output.partition_column else []
        rows = scored.where(F.col(REASON_COLUMN).isNotNull()).select(
            *cfg.output.key_columns,
            F.col(RAW_COLUMN).alias("raw_row"),
            F.col(REASON_COLUMN).alias("reason"),
            "model_name",
            "model_version",
            "scored_at",
            "job_run_id",
            *partition,
        )
        write_idempotent(rows, quarantine, ds, commit_tag=job_run_id, stats_columns=cfg.output.key_columns)


def comparison_schema(partition_column: str) -> Any:
    """The comparison table's columns: the model pair, counts, every metric, the verdict and its report."""
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("model_name", T.StringType()),
            T.StructField("champion_uri", T.StringType()),
            T.StructField("champion_version", T.StringType()),
            T.StructField("challenger_uri", T.StringType()),
            T.StructField("challenger_version", T.StringType()),
            T.StructField("rows_scored", T.LongType()),
            T.StructField("invalid_rows", T.LongType()),
            *(T.StructField(name, T.DoubleType()) for name in METRIC_COLUMNS),
            T.StructField("decision_threshold", T.DoubleType()),
            T.StructField("thresholds", T.StringType()),
            T.StructField("verdict", T.StringType()),
            T.StructField("failed_checks", T.StringType()),
            T.StructField("report", T.StringType()),
            T.StructField("job_run_id", T.StringType()),
            T.StructField("compared_at", T.TimestampType()),
            T.StructField(partition_column, T.StringType()),
        ]
    )


def write_comparison(
    spark: SparkSession,
    shadow: ShadowSection,
    ds: str | None,
    *,
    models: tuple[ModelRef, ModelRef],
    comparison: Comparison,
    counts: tuple[int, int],
    report: Path,
    job_run_id: str,
) -> None:
    """Replace this ds and model pair's row of ``shadow.comparison`` (one Delta commit): the pair
    (champion, challenger), the counts (rows scored, invalid rows), every metric, the verdict and the
    report's path."""
    champion, challenger = models
    section = shadow.comparison
    column = section.partition_column or "ds"
    row: dict[str, Any] = {
        "model_name": champion.name,
        "champion_uri": champion.load_uri,
        "champion_version": champion.version,
        "challenger_uri": challenger.load_uri,
        "challenger_version": challenger.version,
        "rows_scored": counts[0],
        "invalid_rows": counts[1],
        **{name: comparison.metrics.get(name) for name in METRIC_COLUMNS},
        "decision_threshold": shadow.decision_threshold,
        "thresholds": json.dumps(shadow.thresholds, sort_keys=True),
        "verdict": comparison.verdict,
        "failed_checks": "; ".join(comparison.failed),
        "report": str(report),
        "job_run_id": job_run_id,
        "compared_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
        column: ds,
    }
    schema = comparison_schema(column)
    df = spark.createDataFrame([tuple(row.get(f.name) for f in schema.fields)], schema)
    pair = {"champion_uri": champion.load_uri, "challenger_uri": challenger.load_uri}
    if section.partition_column is None:  # an unpartitioned table: this ds's row of the pair
        write_idempotent(df, section, None, job_run_id, match={"ds": ds, **pair})
    else:
        write_idempotent(df, section, ds, job_run_id, match=pair)
