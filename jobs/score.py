"""The nightly scoring job: read a partition, score it with a pinned MLflow model, write it idempotently.

``batchscore score --config conf/jobs/<job>.yaml [--ds YYYY-MM-DD] [--set key=value]…`` or
``spark-submit --jars $(batchscore jars) jobs/score.py …`` (``batchscore submit score …`` does that).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a script (spark-submit jobs/score.py): our module names must not shadow top-level packages.
    sys.path.pop(0)

import argparse
import datetime as dt
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from jobs import redact
from jobs.canary import canary_variant
from jobs.config import ScoringJobConfig, load_job_config
from jobs.errors import (
    BatchscoreError,
    ExecutorError,
    InvalidInputError,
    MissingPartitionError,
    SchemaMismatchError,
    SignatureError,
    TableLocationError,
)
from jobs.file_scan import FileScan, local_snapshot, open_input, partition_uris, plan_file_scan
from jobs.home import resolve_location
from jobs.names import check_job_names
from jobs.registry import (
    ResolvedModel,
    output_fields,
    resolve_model,
    signature_input_names,
    signature_row_shape,
)
from jobs.schema_check import check_input_schema
from jobs.session import spark_session
from jobs.tables import (
    TableInput,
    committed_rows,
    frame_of,
    partition_of,
    read_table,
    table_exists,
    validate_ds,
    write_idempotent,
)
from jobs.tracking import job_run, quiet_mlflow, tracking_target
from udfs.file_reader import make_file_scorer
from udfs.scorer import make_arrow_scorer
from udfs.spec import ModelRef, OutputField, ScoringPlan, arrow_batch_rows
from udfs.stats import StatsAccumulatorParam, empty_stats, summary_metrics
from udfs.validation import ERROR_MARKER, INVALID_COLUMN, INVALID_FIELDS, RAW_COLUMN, REASON_COLUMN

if TYPE_CHECKING:
    from pyspark.accumulators import AccumulatorParam
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

log = logging.getLogger("batchscore.score")

ResultT = TypeVar("ResultT")

LINEAGE_COLUMNS = ("model_name", "model_version", "model_run_id", "scored_at", "job_run_id")


@dataclass(frozen=True)
class Lineage:
    """What every output row records about how it was scored."""

    model_name: str | None
    model_version: str | None
    model_run_id: str | None
    scored_at: dt.datetime
    job_run_id: str

    @classmethod
    def for_model(cls, ref: ModelRef, job_run_id: str, scored_at: dt.datetime | None = None) -> Lineage:
        return cls(ref.name, ref.version, ref.run_id, scored_at or dt.datetime.now(dt.UTC), job_run_id)


@dataclass(frozen=True)
class ScoreResult:
    rows_scored: int
    duration_s: float
    output: str
    model_uri: str
    model_version: str | None
    job_run_id: str
    ds: str | None
    runtime: dict[str, float] = field(default_factory=dict)  # model loads, batch latency, stage times
    invalid_rows: int = 0  # sent to the quarantine table

    @property
    def rows_per_s(self) -> float:
        return self.rows_scored / self.duration_s if self.duration_s > 0 else 0.0


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def build_plan(
    resolved: ResolvedModel,
    cfg: ScoringJobConfig,
    input_columns: Sequence[str],
    *,
    check_columns: bool = True,
) -> ScoringPlan:
    """Decide the feature, pass-through and prediction columns, checking the input has what they need
    (``check_columns=False`` leaves that to :func:`jobs.schema_check.check_input_schema`, which also checks
    types and reports every problem at once)."""
    features = feature_columns(resolved, cfg.input.feature_columns)
    if not features:
        raise SchemaMismatchError(
            f"model {resolved.ref.load_uri} has no column-based input signature; "
            "set input.feature_columns to the columns to feed it"
        )
    partition = [cfg.output.partition_column] if cfg.output.partition_column else []
    passthrough = _unique([*cfg.output.key_columns, *cfg.output.passthrough_columns, *partition])
    missing = [c for c in _unique([*features, *passthrough]) if c not in input_columns]
    if missing and check_columns:
        raise SchemaMismatchError(
            f"input {cfg.input.describe()} lacks column(s) {missing}; found {list(input_columns)}"
        )
    outputs = output_fields(resolved, cfg.model.prediction_column)
    clashes = [o.name for o in outputs if o.name in passthrough or o.name in LINEAGE_COLUMNS]
    if clashes:
        raise SchemaMismatchError(
            f"prediction column(s) {clashes} clash with key/pass-through/lineage columns; "
            "rename them in output config or model.prediction_column"
        )
    return ScoringPlan(
        feature_columns=features,
        passthrough_columns=passthrough,
        outputs=outputs,
        batch_size=cfg.model.batch_size,
        device=cfg.model.device,
        input_names=signature_input_names(resolved),
        row_shape=signature_row_shape(resolved),
        autocast=cfg.model.autocast,
        cpu_kernels=cfg.model.cpu_kernels,
        prefetch=cfg.model.prefetch,
        on_invalid=cfg.quality.on_invalid,
        raw_columns=_unique([*cfg.output.key_columns, *features]),
        key_columns=tuple(cfg.output.key_columns),
        # torch modules take float32 tensors (features_to_numpy); pyfunc models take the columns as read.
        input_dtype="float32" if resolved.ref.flavor == "pytorch" else None,
    )


def feature_columns(resolved: ResolvedModel, configured: Sequence[str] | None) -> tuple[str, ...]:
    """The feature columns in the order the model takes them.

    A column-based signature names its inputs, and MLflow matches columns by name: configured
    ``input.feature_columns`` must be the same names (in any order) and are fed in the signature's order;
    other names are refused, since feeding them by position would score silently wrong. Without names
    (a tensor signature, or none) the configured order is the order the model gets.
    """
    names = signature_input_names(resolved)
    if not configured or not names:
        return tuple(configured or names)
    if len(set(configured)) != len(configured):
        duplicated = sorted({c for c in configured if list(configured).count(c) > 1})
        raise SchemaMismatchError(f"input.feature_columns names {duplicated} more than once")
    missing = [n for n in names if n not in configured]
    unexpected = [c for c in configured if c not in names]
    if missing or unexpected:
        raise SchemaMismatchError(
            f"input.feature_columns do not match the input signature of model {resolved.ref.load_uri}, "
            f"which takes columns by name: missing {missing}, not in the signature {unexpected}; expected "
            f"the names {list(names)} (in any order) or no input.feature_columns"
        )
    if tuple(configured) != names:
        log.info("input.feature_columns matched to the model's signature by name: %s", ", ".join(names))
    return names


CHALLENGER_SUFFIX = "__challenger"


def pair_plan(
    champion: ResolvedModel,
    challenger: ResolvedModel,
    cfg: ScoringJobConfig,
    challenger_uri: str,
    columns: Sequence[str],
    *,
    extra: Sequence[str] = (),
) -> tuple[ScoringPlan, ScoringPlan, ScoringPlan]:
    """(combined, champion's, challenger's) plans for scoring every row with both models in one pass
    (shadow and canary jobs): one scalar score each; the challenger's column gets ``__challenger``."""
    first = build_plan(champion, cfg, columns, check_columns=False)
    challenger_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"uri": challenger_uri})})
    second = build_plan(challenger, challenger_cfg, columns, check_columns=False)
    for resolved, plan in ((champion, first), (challenger, second)):
        if len(plan.outputs) != 1 or plan.outputs[0].kind != "scalar":
            raise SignatureError(
                f"champion/challenger scoring needs one scalar score per model; {resolved.ref.load_uri} "
                f"gives {[f'{o.name}:{o.kind}' for o in plan.outputs]}"
            )
    combined = replace(
        first,
        feature_columns=_unique([*first.feature_columns, *second.feature_columns]),
        passthrough_columns=_unique([*first.passthrough_columns, *extra]),
        outputs=(
            first.outputs[0],
            replace(second.outputs[0], name=first.outputs[0].name + CHALLENGER_SUFFIX),
        ),
        raw_columns=_unique([*first.raw_columns, *second.raw_columns]),
        input_dtype=first.input_dtype or second.input_dtype,
        pair=((champion.ref, first), (challenger.ref, second)),
    )
    return combined, first, second


def _spark_type(out: OutputField) -> DataType:
    from pyspark.sql import types as T

    scalar: dict[str, Any] = {
        "float32": T.FloatType(),
        "float64": T.DoubleType(),
        "int32": T.IntegerType(),
        "int64": T.LongType(),
        "bool": T.BooleanType(),
    }
    if out.kind == "struct":
        return T.StructType([T.StructField(c.name, _spark_type(c), nullable=False) for c in out.children])
    base = scalar[out.dtype]
    return T.ArrayType(base, containsNull=False) if out.kind == "vector" else base


def stats_accumulator(spark: SparkSession) -> Any:
    """A Spark accumulator collecting the workers' loads and batch timings (None on Spark Connect)."""
    try:
        context = spark.sparkContext
    except Exception:  # Spark Connect sessions have no SparkContext
        return None
    # One conf lookup, not getConf(), which copies every setting over py4j (~30 ms a job).
    if (spark.conf.get("spark.python.worker.reuse", "true") or "").lower() != "true":
        log.warning(
            "spark.python.worker.reuse is off: each task starts a Python worker that loads the model again"
        )
    # The parameter is duck-typed so that workers unpickle it from udfs without pyspark's base class.
    return context.accumulator(empty_stats(), cast("AccumulatorParam[Any]", StatsAccumulatorParam()))


def _output_schema(schema: StructType, plan: ScoringPlan) -> Any:
    from pyspark.sql import types as T

    quarantining = plan.on_invalid == "quarantine"
    fields = [schema[name] for name in plan.passthrough_columns]
    fields += [T.StructField(out.name, _spark_type(out), nullable=quarantining) for out in plan.outputs]
    if quarantining:  # null for scored rows; reason and raw row JSON for invalid ones
        invalid = T.StructType([T.StructField(name, T.StringType()) for name in INVALID_FIELDS])
        fields.append(T.StructField(INVALID_COLUMN, invalid))
    return T.StructType(fields)


def _scored_names(plan: ScoringPlan) -> list[str]:
    """The pass-through and prediction columns of a scored DataFrame, in order."""
    return [*plan.passthrough_columns, *(out.name for out in plan.outputs)]


# The workers' struct of reason and raw row, as the two columns a scored DataFrame has (SQL text).
_FLATTENED_INVALID = tuple(
    f"{INVALID_COLUMN}.{field} AS {column}"
    for field, column in zip(INVALID_FIELDS, (REASON_COLUMN, RAW_COLUMN), strict=True)
)


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


_NUMERIC_BYTES = {"byte": 1, "short": 2, "integer": 4, "long": 8, "float": 4, "double": 8}


def feature_row_bytes(schema: Any, plan: ScoringPlan) -> int | None:
    """Bytes per row of the plan's feature columns as Arrow holds them: numeric columns, or one numeric
    array column whose length the tensor signature fixes. None when it varies by row (other arrays,
    structs) or is not known (decimals), and then each Arrow batch holds one model batch."""
    from pyspark.sql import types as T

    total = 0
    arrays = 0
    for name in plan.feature_columns:
        dtype = schema[name].dataType
        if isinstance(dtype, T.ArrayType) and plan.row_shape:
            arrays += 1
            dtype, values = dtype.elementType, math.prod(plan.row_shape)
        else:
            values = 1
        size = _NUMERIC_BYTES.get(dtype.typeName())
        if size is None or arrays > 1:
            return None
        total += size * values
    return total


def sized_for(schema: StructType, plan: ScoringPlan) -> ScoringPlan:
    """``plan`` with its Arrow batch size set from the input's feature columns (:func:`arrow_batch_rows`)."""
    rows = arrow_batch_rows(plan.batch_size, feature_row_bytes(schema, plan))
    return replace(plan, arrow_batch_rows=rows)


def transform(
    df: DataFrame, ref: ModelRef, plan: ScoringPlan, lineage: Lineage | None, stats: Any = None
) -> DataFrame:
    """Score ``df``: pass-through columns, prediction columns, then the lineage columns.

    Pure: no I/O beyond what Spark does lazily, so tests run it on small inline DataFrames. ``stats``,
    from :func:`stats_accumulator`, collects model loads and batch timings when the result is computed.
    """
    selected = df.select(*_unique([*plan.passthrough_columns, *plan.feature_columns]))
    schema = df.schema
    scorer = make_arrow_scorer(ref, sized_for(schema, plan), stats)
    scored = selected.mapInArrow(scorer, _output_schema(schema, plan))
    if plan.on_invalid == "quarantine":
        scored = scored.selectExpr(*map(_sql_name, _scored_names(plan)), *_FLATTENED_INVALID)
    return with_lineage(scored, lineage)


# What a run does to scored rows it reads more than once (see :func:`kept`).
Keep = Callable[["DataFrame"], "DataFrame"]


def transform_files(
    spark: SparkSession,
    schema: StructType,
    scan: FileScan,
    ref: ModelRef,
    plan: ScoringPlan,
    *,
    lineage: Lineage | None,
    stats: Any = None,
    keep: Keep | None = None,
) -> DataFrame:
    """Score the files of ``scan`` (the data files of an input of ``schema``): the same rows and columns as
    :func:`transform`, but each task reads its own files with pyarrow, so only keys and scores cross into
    the JVM. ``keep`` (see :func:`kept`) gets the rows as the workers return them, before the partition
    values are added."""
    # One task per file group, without a shuffle: spark.range gives each partition exactly one group number.
    groups = scan.file_groups(spark.sparkContext.defaultParallelism)
    tasks = spark.range(0, len(groups), 1, numPartitions=len(groups))
    # Partition values are constants: the JVM adds them, so Python never ships them row by row.
    in_python = replace(
        sized_for(schema, plan),
        passthrough_columns=tuple(c for c in plan.passthrough_columns if c not in scan.constants),
        key_columns=tuple(c for c in plan.key_columns if c not in scan.constants),
    )
    scorer = make_file_scorer(ref, in_python, list(scan.file_columns), groups, stats)
    scored = tasks.mapInArrow(scorer, _output_schema(schema, in_python))
    if keep is not None:
        scored = keep(scored)
    # One projection, from SQL text in one py4j call, adds the constants and orders the columns (building
    # it from Column objects took ~40 py4j calls, ~10 ms a job).
    columns = [
        f"CAST({_sql_string(str(scan.constants[name]))} AS {schema[name].dataType.simpleString()}) AS "
        f"{_sql_name(name)}"
        if name in scan.constants
        else _sql_name(name)
        for name in _scored_names(plan)
    ]
    if plan.on_invalid == "quarantine":
        columns += _FLATTENED_INVALID
    return with_lineage(scored.selectExpr(*columns), lineage)


def _sql_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def score_input(
    spark: SparkSession,
    df: DataFrame | TableInput,
    cfg: ScoringJobConfig,
    ds: str | None,
    resolved: tuple[ModelRef, ScoringPlan],
    *,
    lineage: Lineage | None,
    stats: Any = None,
    files: Sequence[str] | None = None,
    keep: Keep | None = None,
) -> DataFrame:
    """The scored DataFrame, read by the tasks from the table's files when allowed, else through Spark.
    ``files``: ``df.inputFiles()`` when the caller already listed them. ``keep``: from :func:`kept`, when
    the result is read more than once."""
    ref, plan = resolved
    needed = list(_unique([*plan.passthrough_columns, *plan.feature_columns]))
    scan, why = plan_file_scan(spark, df, cfg.input, ds, needed, files=files)
    if scan is None:
        if cfg.input.read_mode == "files":
            raise SchemaMismatchError(f"input.read_mode is files but {why}; use auto or dataframe")
        log.info("reading %s through Spark: %s", cfg.input.describe(), why)
        scored = transform(frame_of(df), ref, plan, None, stats)
        return with_lineage(scored if keep is None else keep(scored), lineage)
    log.info("tasks read %d file(s) of %s directly (%s)", len(scan.files), cfg.input.describe(), why)
    return transform_files(spark, df.schema, scan, ref, plan, lineage=lineage, stats=stats, keep=keep)


@contextmanager
def kept() -> Iterator[Keep]:
    """A function that persists the scored rows a run reads more than once (to count them, to write the
    invalid ones to quarantine, then the valid ones to the output); unpersisted on leaving. Given to
    :func:`score_input` as ``keep``, it persists the rows as the workers return them, before constant
    columns (a partition value the tasks read from file paths) are added: stored row by row, a constant
    ``ds`` was ~25% of the cache's cost (10 M rows: ~1.3 of ~5 s of JVM CPU)."""
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


@contextmanager
def executor_errors() -> Iterator[None]:
    """Turn a task failure that carries a user-facing worker error (``BATCHSCORE_ERROR[kind]: …``, e.g. a
    model that fails to load, or an invalid row under ``on_invalid: fail``) into a one-line error."""
    try:
        yield
    except BatchscoreError:
        raise
    except Exception as exc:
        found = _WORKER_ERROR.search(str(exc))
        if found is None:
            raise
        kind, message = found.groups()
        error = InvalidInputError if kind == "invalid_rows" else ExecutorError
        raise error(f"a task failed on an executor: {message}") from None


def partition_files(df: DataFrame | TableInput, section: Any, ds: str) -> tuple[str, ...]:
    """The data files of partition ``ds``. Fails with the nearest partitions when there are none at all
    (an upstream job did not run); a partition whose files hold zero rows is scored as empty."""
    snapshot = df.snapshot if isinstance(df, TableInput) else None
    if snapshot is None:
        snapshot, _ = local_snapshot(section)  # a local Delta table: listed from its log, in milliseconds
    column = section.partition_column
    listed = partition_uris(snapshot, column, ds) if snapshot is not None else None
    if listed is not None:
        files = listed
    elif section.format == "parquet" and column is not None:  # Spark lists every file of a Parquet input
        files = partition_of(frame_of(df).inputFiles(), column, ds)
    else:
        files = tuple(frame_of(df).inputFiles())
    if files:
        return files
    if snapshot is not None:
        found = sorted({str(v) for f in snapshot.files if (v := f.partition_values.get(column)) is not None})
    else:
        whole = read_table(frame_of(df).sparkSession, section, section.format)
        found = sorted(
            {m.group(1) for f in whole.inputFiles() if (m := re.search(rf"/{column}=([^/]+)/", f))}
        )
    raise MissingPartitionError(
        f"input {section.describe()} has no partition {column}={ds}; "
        f"latest partitions: {found[-5:] or 'none'}"
    )


def run(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None = None) -> ScoreResult:
    """Resolve the model, check the input, score, and write one run of the job; log it to MLflow.

    With ``quality.on_invalid: quarantine`` the scored rows are persisted once, counted, and only when the
    invalid fraction is within ``quality.max_invalid_fraction`` written: first the invalid rows to the
    quarantine table, then the valid ones to the output (the output commit is the last step, so the
    output only ever moves to a run whose quarantine rows are already in place). Above the limit the job
    fails and neither table changes.
    """
    from pyspark.sql import functions as F

    check_job_names(cfg)  # every name and path before any work, under the config key that gave it
    if ds is not None:
        validate_ds(ds)
    if ds is not None and cfg.output.partition_column is None:
        raise TableLocationError(
            f"output {cfg.output.describe()}: --ds was given but output.partition_column is not set; "
            "a nightly run must replace one partition, not the whole table"
        )
    started = time.perf_counter()
    target = tracking_target(cfg.mlflow)
    resolved = resolve_model(
        cfg.model.uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s
    )
    ref = resolved.ref
    log.info("model %s pinned to %s (run %s)", ref.requested_uri, ref.load_uri, ref.run_id)
    df = open_input(spark, cfg.input, ds)
    challenger = None
    if cfg.canary is not None:  # both models score every row; the entity's variant picks the score
        challenger = resolve_model(
            cfg.canary.challenger_uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s
        )
        plan, first, second = pair_plan(resolved, challenger, cfg, cfg.canary.challenger_uri, df.columns)
        check_input_schema(df, resolved, first, cfg)
        check_input_schema(df, challenger, second, cfg)
    else:
        plan = build_plan(resolved, cfg, df.columns, check_columns=False)
        check_input_schema(df, resolved, plan, cfg)
    files = partition_files(df, cfg.input, ds) if ds is not None else None
    output = cfg.output.table or resolve_location(cfg.output.path or "")
    quarantine = cfg.quarantine_section()
    quarantining = cfg.quality.on_invalid == "quarantine"
    with job_run(cfg.mlflow, run_name=f"{cfg.name}-{ds or 'all'}") as tracker:
        tracker.log_params(
            {
                "job": cfg.name,
                "model_uri": ref.requested_uri,
                "model_load_uri": ref.load_uri,
                "model_version": ref.version,
                "model_run_id": ref.run_id,
                "input": cfg.input.table or resolve_location(cfg.input.path or ""),
                "output": output,
                "ds": ds,
                "batch_size": plan.batch_size,
                "on_invalid": cfg.quality.on_invalid,
                "max_invalid_fraction": cfg.quality.max_invalid_fraction,
            }
        )
        stats = stats_accumulator(spark)
        lineage = Lineage.for_model(ref, tracker.run_id)
        # Data skipping on keys and scalar scores ("find this entity", "scores above t"); not on lineage.
        stats_columns = [*cfg.output.key_columns, *(o.name for o in plan.outputs[:1] if o.kind == "scalar")]
        invalid = 0
        with executor_errors(), kept() as keep:
            # Lineage columns are constants: added after the (persisted) scores, so the cache stays narrow.
            scored = score_input(
                spark,
                df,
                cfg,
                ds,
                (ref, plan),
                lineage=None,
                stats=stats,
                files=files,
                keep=keep if quarantining else None,
            )
            log.info("scoring %s into %s", cfg.input.describe(), output)
            if quarantining:
                _, invalid = write_quarantine(with_lineage(scored, lineage), cfg, ds, tracker.run_id)
                valid = scored.where(F.col(REASON_COLUMN).isNull()).drop(REASON_COLUMN, RAW_COLUMN)
            else:
                valid = scored
            if challenger is not None:
                valid = apply_canary(
                    valid, cfg, plan, lineage, Lineage.for_model(challenger.ref, tracker.run_id)
                )
            else:
                valid = with_lineage(valid, lineage)
            write_idempotent(
                valid,
                cfg.output,
                ds,
                commit_tag=tracker.run_id,
                stats_columns=stats_columns,
                merge_schema=challenger is not None,  # enabling a canary adds the `variant` column
            )
        rows = committed_rows(spark, cfg.output, tracker.run_id, ds)
        duration = time.perf_counter() - started
        runtime = summary_metrics(stats.value) if stats is not None else {}
        runtime["invalid_rows"] = float(invalid)  # from the count, not the accumulator (retries add twice)
        if challenger is not None:
            runtime["canary_rows"] = float(canary_rows(spark, cfg, ds))
        result = ScoreResult(
            rows, duration, output, ref.requested_uri, ref.version, tracker.run_id, ds, runtime, invalid
        )
        tracker.log_metrics(
            {"rows_scored": rows, "duration_s": duration, "rows_per_s": result.rows_per_s, **runtime}
        )
    if rows == 0 and invalid == 0:
        log.warning(
            "partition %s of %s had no rows; the output partition is empty (a rerun that finds it empty "
            "changes nothing)",
            ds,
            cfg.input.describe(),
        )
    if invalid:
        log.warning("%d invalid row(s) written to quarantine %s", invalid, quarantine.describe())
    log.info("scored %d rows in %.1f s (%.0f rows/s)", rows, duration, result.rows_per_s)
    if runtime.get("model_batches"):
        log.info(
            "model loads %d over %d worker(s); batch latency p50 %.1f ms, p99 %.1f ms; "
            "decode %.1f s, compute %.1f s, encode %.1f s",
            runtime["model_loads"],
            runtime["scoring_workers"],
            runtime["batch_latency_p50_ms"],
            runtime["batch_latency_p99_ms"],
            runtime["decode_total_s"],
            runtime["compute_total_s"],
            runtime["encode_total_s"],
        )
    return result


def apply_canary(
    valid: DataFrame, cfg: ScoringJobConfig, plan: ScoringPlan, champion: Lineage, challenger: Lineage
) -> DataFrame:
    """Each row's variant from its entity key; its score and lineage from that variant's model."""
    from pyspark.sql import functions as F

    assert cfg.canary is not None
    key = cfg.canary.key_column or cfg.output.key_columns[0]
    score, other = plan.outputs[0].name, plan.outputs[1].name
    variant = canary_variant(F.col(key), cfg.canary.fraction, cfg.canary.salt)
    out = with_lineage(valid.withColumn("variant", variant), champion)
    chosen = F.col("variant") == F.lit("challenger")
    out = out.withColumns(
        {
            score: F.when(chosen, F.col(other)).otherwise(F.col(score)),
            "model_name": F.when(chosen, F.lit(challenger.model_name)).otherwise(F.col("model_name")),
            "model_version": F.when(chosen, F.lit(challenger.model_version)).otherwise(
                F.col("model_version")
            ),
            "model_run_id": F.when(chosen, F.lit(challenger.model_run_id)).otherwise(F.col("model_run_id")),
        }
    )
    return out.select(*plan.passthrough_columns, score, "variant", *LINEAGE_COLUMNS)


def canary_rows(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None) -> int:
    """Rows of this run's output partition that the challenger scored (read back from the output)."""
    from pyspark.sql import functions as F

    section = cfg.output
    table = read_table(spark, section)
    if ds is not None and section.partition_column:
        table = table.where(F.col(section.partition_column) == F.lit(ds))
    return int(table.where(F.col("variant") == F.lit("challenger")).count())


def write_quarantine(
    scored: DataFrame, cfg: ScoringJobConfig, ds: str | None, job_run_id: str
) -> tuple[int, int]:
    """Count the scored rows (one pass, from the persisted result), enforce ``max_invalid_fraction``, and
    replace the quarantine partition with this run's invalid rows. Returns ``(rows, invalid rows)``."""
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
    quarantine = cfg.quarantine_section()
    if invalid or table_exists(scored.sparkSession, quarantine):  # a rerun must clear stale rows too
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
    return total, invalid


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batchscore score", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="job config YAML, e.g. conf/jobs/fraud_nightly.yaml")
    parser.add_argument("--ds", help="partition to score, YYYY-MM-DD (default: the whole input)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.batch_size=8192 (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def configure_logging(level: str = "INFO") -> None:
    # force: pyspark may have configured the root logger (to stdout) before our main runs.
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    redact.install()  # secrets from the environment and URL credentials never reach the log
    quiet_mlflow()


def run_job(
    args: argparse.Namespace, job: Callable[[SparkSession, ScoringJobConfig, str | None], ResultT]
) -> ResultT | None:
    """What every job's ``main`` does around its ``run``: logging, the config (with ``--set`` overrides),
    the configured SparkSession, and a user error (bad config, unknown model, missing input) logged in one
    line without a traceback, returning None."""
    configure_logging(args.log_level)
    try:
        cfg = load_job_config(args.config, args.overrides)
        with spark_session(cfg.spark.profile, cfg.spark.conf) as spark:
            return job(spark, cfg, args.ds)
    except BatchscoreError as exc:
        log.error("%s", exc)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``batchscore score`` and ``spark-submit jobs/score.py``.

    Returns 0 on success and 2 on a user error (bad config, unknown model, missing input), logged without
    a traceback.
    """
    result = run_job(parse_args(argv), run)
    if result is None:
        return 2
    print(
        redact.redact(
            f"scored {result.rows_scored} rows with {result.model_uri} (version {result.model_version}) "
            f"into {result.output} in {result.duration_s:.1f} s; {result.invalid_rows} invalid row(s) "
            f"quarantined; job run {result.job_run_id}"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
