"""Scoring: a :class:`~jobs.inputs.ScoringInput` and a plan -> the scored DataFrame (lazy, as any).

Two paths give the same rows and columns: :func:`transform` scores a DataFrame through ``mapInArrow``;
:func:`transform_files` has each task read its own Parquet files with pyarrow, so only keys and scores
cross into the JVM. :func:`score` picks one for an input.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from batchscore.jobs.errors import BatchscoreError, ExecutorError, InvalidInputError, SchemaMismatchError
from batchscore.jobs.planning import Lineage, output_schema, scored_names, sized_for, unique
from batchscore.jobs.tables import sql_name, sql_string
from batchscore.udfs.file_reader import make_file_scorer
from batchscore.udfs.scorer import make_arrow_scorer
from batchscore.udfs.spec import ModelRef, ScoringPlan
from batchscore.udfs.stats import merged, summary_metrics
from batchscore.udfs.validation import ERROR_MARKER, INVALID_COLUMN, INVALID_FIELDS, RAW_COLUMN, REASON_COLUMN

STATS_FIELD = INVALID_FIELDS[2]

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from batchscore.jobs.file_scan import FileScan
    from batchscore.jobs.inputs import ScoringInput

log = logging.getLogger(__name__)

# What a run does to scored rows it reads more than once (see :func:`kept`).
Keep = Callable[["DataFrame"], "DataFrame"]

# The workers' struct of reason and raw row, as the two columns a scored DataFrame has (SQL text).
_FLATTENED_INVALID = tuple(
    f"{INVALID_COLUMN}.{field} AS {column}"
    for field, column in zip(INVALID_FIELDS[:2], (REASON_COLUMN, RAW_COLUMN), strict=True)
)

_LOCAL_MASTER = re.compile(r"^local(?:-cluster)?\[(\d+|\*)(?:\s*,\s*(\d+))?")


def task_slots(spark: SparkSession) -> int | None:
    """How many tasks the session runs at once, from its settings (so on any kind of session):
    ``spark.default.parallelism``; a local master's threads (``local-cluster[n, cores, …]``: n x cores);
    executors x cores; the standalone ``spark.cores.max``. None when the settings do not say."""
    conf = spark.conf
    if parallelism := conf.get("spark.default.parallelism", None):
        return max(1, int(parallelism))
    master = conf.get("spark.master", None) or ""
    found = _LOCAL_MASTER.match(master)
    if found:
        threads = (os.cpu_count() or 1) if found.group(1) == "*" else int(found.group(1))
        if master.startswith("local-cluster") and found.group(2):
            return threads * int(found.group(2))
        return max(1, threads)
    executors, cores = conf.get("spark.executor.instances", None), conf.get("spark.executor.cores", None)
    if executors and cores:
        return max(1, int(executors) * int(cores))
    if cores_max := conf.get("spark.cores.max", None):
        return max(1, int(cores_max))
    return None


class RuntimeStats:
    """The workers' model loads, devices and batch timings of one scoring query.

    Each task sends its stats on one row of its last batch (:func:`udfs.scorer.with_task_stats`); an
    observed metric of the query collects them as the first action that computes it runs. Spark merges an
    observed metric from successful task attempts only, so a retried task counts once, and it works on a
    classic session and over Spark Connect alike.
    """

    def __init__(self) -> None:
        from pyspark.sql import Observation

        self._observation = Observation(f"batchscore_stats_{uuid.uuid4().hex[:12]}")
        self._observed = False

    def observe(self, scored: DataFrame) -> DataFrame:
        """``scored`` (the workers' output, with its status struct) with the stats observed."""
        from pyspark.sql import functions as F

        if self._observed:
            raise RuntimeError("RuntimeStats observes one scoring query; make one per query")
        self._observed = True
        stats = F.collect_list(F.col(f"{INVALID_COLUMN}.{STATS_FIELD}")).alias("stats")
        return scored.observe(self._observation, stats)

    def merged(self) -> dict[str, Any]:
        """Every task's stats, merged (:func:`udfs.stats.merge`). Call it only after an action computed
        the observed query: before, Spark has no value to give and would wait."""
        if not self._observed:
            raise RuntimeError("no scoring query was observed")
        return merged(self._observation.get["stats"] or [])

    def summary(self) -> dict[str, float]:
        """The job's runtime metrics (:func:`udfs.stats.summary_metrics`)."""
        return summary_metrics(self.merged())


def _warn_without_worker_reuse(spark: SparkSession) -> None:
    if (spark.conf.get("spark.python.worker.reuse", "true") or "").lower() != "true":
        log.warning(
            "spark.python.worker.reuse is off: each task starts a Python worker that loads the model again"
        )


def _project(
    scored: DataFrame, plan: ScoringPlan, columns: list[str], stats: RuntimeStats | None
) -> DataFrame:
    """The workers' output as the scored DataFrame's columns: ``columns`` (SQL), then the reason and raw
    values of invalid rows when quarantining; the stats observed on the way when asked."""
    if stats is not None:
        scored = stats.observe(scored)
    if plan.on_invalid == "quarantine":
        columns = [*columns, *_FLATTENED_INVALID]
    projected: DataFrame = scored.selectExpr(*columns)
    return projected


def with_lineage(scored: DataFrame, lineage: Lineage | None) -> DataFrame:
    """Append the lineage columns every output row carries (``None``: leave them to the caller)."""
    from pyspark.sql import functions as F

    if lineage is None:
        return scored
    return scored.withColumns(
        {
            "model_name": F.lit(lineage.model_name).cast("string"),
            "model_version": F.lit(lineage.model_version).cast("string"),
            "model_run_id": F.lit(lineage.model_run_id).cast("string"),
            "scored_at": F.lit(lineage.scored_at).cast("timestamp"),
            "job_run_id": F.lit(lineage.job_run_id),
        }
    )


def transform(
    df: DataFrame,
    ref: ModelRef,
    plan: ScoringPlan,
    lineage: Lineage | None,
    stats: RuntimeStats | None = None,
) -> DataFrame:
    """Score ``df``: pass-through columns, prediction columns, then the lineage columns.

    Pure: no I/O beyond what Spark does lazily, so tests run it on small inline DataFrames. ``stats``
    collects model loads and batch timings when the result is computed.
    """
    selected = df.select(*unique([*plan.passthrough_columns, *plan.feature_columns]))
    schema = df.schema
    scorer = make_arrow_scorer(ref, sized_for(schema, plan))
    scored = selected.mapInArrow(scorer, output_schema(schema, plan))
    return with_lineage(_project(scored, plan, list(map(sql_name, scored_names(plan))), stats), lineage)


def transform_files(
    source: ScoringInput,
    scan: FileScan,
    ref: ModelRef,
    plan: ScoringPlan,
    *,
    stats: RuntimeStats | None,
    keep: Keep | None,
) -> DataFrame:
    """Score the files of ``scan`` (the data files of ``source``): the same rows and columns as
    :func:`transform` without lineage, but each task reads its own files with pyarrow. ``keep`` (see
    :func:`kept`) gets the rows as the workers return them, before the partition values are added."""
    spark, schema = source.spark, source.schema
    # One task per file group, without a shuffle: spark.range gives each partition exactly one group number.
    groups = scan.file_groups(task_slots(spark) or len(scan.files))
    tasks = spark.range(0, len(groups), 1, numPartitions=len(groups))
    # Partition values are constants: the JVM adds them, so Python never ships them row by row.
    in_python = replace(
        sized_for(schema, plan),
        passthrough_columns=tuple(c for c in plan.passthrough_columns if c not in scan.constants),
        key_columns=tuple(c for c in plan.key_columns if c not in scan.constants),
    )
    scorer = make_file_scorer(ref, in_python, list(scan.file_columns), groups)
    scored = tasks.mapInArrow(scorer, output_schema(schema, in_python))
    if keep is not None:
        scored = keep(scored)
    # One projection, from SQL text in one py4j call rather than one per Column, adds the constants and
    # orders the columns.
    columns = [
        f"CAST({sql_string(str(scan.constants[name]))} AS {schema[name].dataType.simpleString()}) AS "
        f"{sql_name(name)}"
        if name in scan.constants
        else sql_name(name)
        for name in scored_names(plan)
    ]
    return _project(scored, plan, columns, stats)


def score(
    source: ScoringInput,
    ref: ModelRef,
    plan: ScoringPlan,
    *,
    lineage: Lineage | None,
    stats: RuntimeStats | None = None,
    keep: Keep | None = None,
) -> DataFrame:
    """The scored DataFrame of ``source``: read by the tasks from the table's files when the input allows
    it, else through Spark. ``keep``: from :func:`kept`, when the result is read more than once."""
    _warn_without_worker_reuse(source.spark)
    needed = list(unique([*plan.passthrough_columns, *plan.feature_columns]))
    scan, why = source.file_scan(needed)
    if scan is not None:
        log.info("tasks read %d file(s) of %s directly (%s)", len(scan.files), source.describe(), why)
        return with_lineage(transform_files(source, scan, ref, plan, stats=stats, keep=keep), lineage)
    if source.read_mode == "files":
        raise SchemaMismatchError(f"input.read_mode is files but {why}; use auto or dataframe")
    log.info("reading %s through Spark: %s", source.describe(), why)
    scored = transform(source.frame, ref, plan, None, stats)
    return with_lineage(scored if keep is None else keep(scored), lineage)


@contextmanager
def kept() -> Iterator[Keep]:
    """A function that persists the scored rows a run reads more than once (to count them, to write the
    invalid ones to quarantine, then the valid ones to the output); unpersisted on leaving. Given to
    :func:`score` as ``keep``, it persists the rows as the workers return them, before constant columns
    (a partition value the tasks read from file paths) are added, so the cache does not store a constant
    row by row."""
    frames: list[DataFrame] = []

    def keep(frame: DataFrame) -> DataFrame:
        frames.append(frame.persist())
        return frame

    try:
        yield keep
    finally:
        for frame in frames:
            frame.unpersist()


_WORKER_ERROR = re.compile(re.escape(ERROR_MARKER) + r"\[(\w+)\]: ([^\n]*)")
# A Python worker that cannot unpickle the scoring function: the executors' Python lacks a module.
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
# A Python worker that died without an error of its own (killed: most often by the kernel's or a
# container's out-of-memory killer), or one Databricks stopped at its UDF memory limit (serverless: 1 GB).
_WORKER_CRASH = re.compile(r"Python worker exited unexpectedly \(crashed\)")
_MEMORY_LIMIT = re.compile(r"UDF_PYSPARK_USER_CODE_ERROR\.MEMORY_LIMIT")
_MEMORY_LIMIT_MB = re.compile(r"Function exceeded the limit of (\d+) megabytes")
_LESS_MEMORY = (
    "lower model.batch_size and spark.sql.execution.arrow.maxRecordsPerBatch, read with "
    "input.read_mode: dataframe, or give each Python worker more memory (docs/platforms.md: memory)"
)


def _missing_module(name: str) -> str:
    if name == "batchscore" or name.startswith("batchscore."):
        return (
            f"executors cannot import batchscore (No module named {name!r}): ship it with the job "
            "(`batchscore submit --master URL …` sends the installed package with --py-files; with "
            "spark-submit, pass --py-files batchscore.zip or the wheel copied to a .zip) or install the "
            "wheel in the executors' Python"
        )
    return (
        f"executors cannot import {name!r}: the executors' Python (spark.pyspark.python) lacks batchscore's "
        "dependencies; install them there (constraints.txt pins the versions) or ship a packed virtualenv "
        "with --archives (Spark's Python package management docs)"
    )


def _environment_error(text: str) -> str | None:
    """The one-line message for a task failure that the executors' environment caused (a module their
    Python lacks, a worker killed or over a memory limit), else None."""
    missing = _MISSING_MODULE.search(text)
    if missing is not None:
        return _missing_module(missing.group(1))
    limit = _MEMORY_LIMIT_MB.search(text)
    if limit is not None or _MEMORY_LIMIT.search(text):
        size = f" ({limit.group(1)} MB)" if limit else ""
        return f"a Python worker went over the platform's memory limit for a UDF{size}: {_LESS_MEMORY}"
    if _WORKER_CRASH.search(text):
        return (
            "a Python worker died while scoring, with no error of its own: it was killed, most often for "
            "memory (the kernel's or a container's out-of-memory killer; the executor's log or dmesg says); "
            + _LESS_MEMORY
        )
    return None


@contextmanager
def executor_errors() -> Iterator[None]:
    """Turn a task failure that carries a user-facing worker error (``BATCHSCORE_ERROR[kind]: …``, e.g. a
    model that fails to load, or an invalid row under ``on_invalid: fail``) or that the executors'
    environment caused into a one-line error."""
    try:
        yield
    except BatchscoreError:
        raise
    except Exception as exc:
        found = _WORKER_ERROR.search(str(exc))
        if found is None:
            message = _environment_error(str(exc))
            if message is None:
                raise
            raise ExecutorError(message) from None
        kind, message = found.groups()
        error = InvalidInputError if kind == "invalid_rows" else ExecutorError
        raise error(f"a task failed on an executor: {message}") from None
