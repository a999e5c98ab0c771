"""Planning: a resolved model and what the caller wants scored -> the :class:`ScoringPlan` the workers run,
and the schema of the DataFrame they return.

A plan is built from a :class:`PlanRequest`: a job builds one from its config
(:meth:`PlanRequest.for_job`), the notebook API from its arguments. Nothing here reads data.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from batchscore.jobs.errors import ConfigError, SchemaMismatchError, SignatureError
from batchscore.jobs.registry import ResolvedModel, output_fields, signature_input_names, signature_row_shape
from batchscore.udfs.spec import ModelRef, OutputField, ScoringPlan, Sharing, arrow_batch_rows
from batchscore.udfs.validation import INVALID_COLUMN, INVALID_FIELDS

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

    from batchscore.jobs.config import ModelSection, ScoringJobConfig

log = logging.getLogger(__name__)

LINEAGE_COLUMNS = ("model_name", "model_version", "model_run_id", "scored_at", "job_run_id")
CHALLENGER_SUFFIX = "__challenger"


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
        return cls(
            ref.name, ref.version, ref.run_id, scored_at or dt.datetime.now(dt.timezone.utc), job_run_id
        )


@dataclass(frozen=True)
class PlanRequest:
    """What to score with a model: its settings, the feature columns (None: the signature's), the key
    columns (a row with a null key is invalid), every column passed through to the output, and the
    columns an invalid row keeps as JSON (None: the keys and features)."""

    model: ModelSection
    feature_columns: Sequence[str] | None = None
    key_columns: tuple[str, ...] = ()
    passthrough_columns: tuple[str, ...] = ()
    on_invalid: Literal["quarantine", "fail"] = "quarantine"
    raw_columns: tuple[str, ...] | None = None

    @classmethod
    def for_job(cls, cfg: ScoringJobConfig) -> PlanRequest:
        """The request of a job config: output keys, pass-through columns and the partition column."""
        partition = [cfg.output.partition_column] if cfg.output.partition_column else []
        keys = tuple(cfg.output.key_columns)
        return cls(
            model=cfg.model,
            feature_columns=cfg.input.feature_columns,
            key_columns=keys,
            passthrough_columns=unique([*keys, *cfg.output.passthrough_columns, *partition]),
            on_invalid=cfg.quality.on_invalid,
        )


def unique(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` without repeats, in first-seen order."""
    return tuple(dict.fromkeys(names))


def build_plan(
    resolved: ResolvedModel, request: PlanRequest, columns: Sequence[str], *, check_columns: bool = True
) -> ScoringPlan:
    """Decide the feature, pass-through and prediction columns for ``resolved``, checking that the input's
    ``columns`` have what they need (``check_columns=False`` leaves that to
    :func:`jobs.schema_check.check_input_schema`, which also checks types and reports every problem)."""
    features = feature_columns(resolved, request.feature_columns)
    if not features:
        raise SchemaMismatchError(
            f"model {resolved.ref.load_uri} has no column-based input signature; "
            "set input.feature_columns to the columns to feed it"
        )
    passthrough = request.passthrough_columns
    missing = [c for c in unique([*features, *passthrough]) if c not in columns]
    if missing and check_columns:
        raise SchemaMismatchError(f"the input lacks column(s) {missing}; found {list(columns)}")
    outputs = output_fields(resolved, request.model.prediction_column)
    clashes = [o.name for o in outputs if o.name in passthrough or o.name in LINEAGE_COLUMNS]
    if clashes:
        raise SchemaMismatchError(
            f"prediction column(s) {clashes} clash with key/pass-through/lineage columns; "
            "rename them in output config or model.prediction_column"
        )
    model = request.model
    return ScoringPlan(
        feature_columns=features,
        passthrough_columns=passthrough,
        outputs=outputs,
        batch_size=model.batch_size,
        device=model.device,
        input_names=signature_input_names(resolved),
        row_shape=signature_row_shape(resolved),
        autocast=model.autocast,
        cpu_kernels=model.cpu_kernels,
        prefetch=model.prefetch,
        on_invalid=request.on_invalid,
        raw_columns=unique(request.raw_columns or [*request.key_columns, *features]),
        key_columns=request.key_columns,
        # torch modules take float32 tensors (features_to_numpy); pyfunc models take the columns as read.
        input_dtype="float32" if resolved.ref.flavor == "pytorch" else None,
        sharing=sharing(resolved, model),
    )


def sharing(resolved: ResolvedModel, model: ModelSection) -> Sharing | None:
    """The executor model server's settings under ``model.sharing: executor`` (torch models only)."""
    if model.sharing == "worker":
        return None
    if resolved.ref.flavor != "pytorch":
        raise ConfigError(
            f"model.sharing: executor serves torch models; {resolved.ref.load_uri} is a "
            f"{resolved.ref.flavor} model (use model.sharing: worker)"
        )
    server = model.server
    return Sharing(
        max_batch_size=server.max_batch_size or model.batch_size,
        max_queue_delay_ms=server.max_queue_delay_ms,
        idle_timeout_s=server.idle_timeout_s,
        start_timeout_s=server.start_timeout_s,
        request_timeout_s=server.request_timeout_s,
        threads=server.threads,
        shared_memory_min_bytes=server.shared_memory_min_bytes,
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


def pair_plan(
    champion: ResolvedModel,
    challenger: ResolvedModel,
    request: PlanRequest,
    columns: Sequence[str],
    *,
    extra: Sequence[str] = (),
) -> tuple[ScoringPlan, ScoringPlan, ScoringPlan]:
    """(combined, champion's, challenger's) plans for scoring every row with both models in one pass
    (shadow and canary): one scalar score each; the challenger's column gets ``__challenger``; ``extra``
    columns (a label) pass through too."""
    first = build_plan(champion, request, columns, check_columns=False)
    second = build_plan(challenger, request, columns, check_columns=False)
    for resolved, plan in ((champion, first), (challenger, second)):
        if len(plan.outputs) != 1 or plan.outputs[0].kind != "scalar":
            raise SignatureError(
                f"champion/challenger scoring needs one scalar score per model; {resolved.ref.load_uri} "
                f"gives {[f'{o.name}:{o.kind}' for o in plan.outputs]}"
            )
    combined = replace(
        first,
        feature_columns=unique([*first.feature_columns, *second.feature_columns]),
        passthrough_columns=unique([*first.passthrough_columns, *extra]),
        outputs=(
            first.outputs[0],
            replace(second.outputs[0], name=first.outputs[0].name + CHALLENGER_SUFFIX),
        ),
        raw_columns=unique([*first.raw_columns, *second.raw_columns]),
        input_dtype=first.input_dtype or second.input_dtype,
        pair=((champion.ref, first), (challenger.ref, second)),
    )
    return combined, first, second


def _output_field(out: OutputField, nullable: bool) -> Any:
    from pyspark.sql import types as T

    return T.StructField.fromJson({"name": out.name, "type": out.spark_json(), "nullable": nullable})


def output_schema(schema: StructType, plan: ScoringPlan) -> StructType:
    """The schema of what the workers return for an input of ``schema``: pass-through columns, prediction
    columns, and the row's status struct: null for scored rows, an invalid row's reason and raw values, and
    on one row per task the task's stats."""
    from pyspark.sql import types as T

    quarantining = plan.on_invalid == "quarantine"
    fields = [schema[name] for name in plan.passthrough_columns]
    fields += [_output_field(out, nullable=quarantining) for out in plan.outputs]
    status = T.StructType([T.StructField(name, T.StringType()) for name in INVALID_FIELDS])
    fields.append(T.StructField(INVALID_COLUMN, status))
    return T.StructType(fields)


def scored_names(plan: ScoringPlan) -> list[str]:
    """The pass-through and prediction columns of a scored DataFrame, in order."""
    return [*plan.passthrough_columns, *(out.name for out in plan.outputs)]


_NUMERIC_BYTES = {"byte": 1, "short": 2, "integer": 4, "long": 8, "float": 4, "double": 8}


def feature_row_bytes(schema: StructType, plan: ScoringPlan) -> int | None:
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
