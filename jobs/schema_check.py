"""The input's schema against the model signature and the job config, checked before any scoring.

Every problem is collected (missing column, wrong type, wrong number of values per row, unexpected column)
and reported in one :class:`~jobs.errors.SchemaMismatchError`, one line per column with what was expected
and what was found, so a user fixes the input once instead of once per rerun.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from batchscore.jobs.errors import SchemaMismatchError

if TYPE_CHECKING:
    from pyspark.sql.types import DataType

    from batchscore.jobs.config import ScoringJobConfig
    from batchscore.jobs.inputs import ScoringInput
    from batchscore.jobs.registry import ResolvedModel
    from batchscore.udfs.spec import ScoringPlan

_NUMERIC_SPECS = {"double", "float", "long", "integer"}


def _is_numeric(kind: DataType) -> bool:
    from pyspark.sql import types as T

    return isinstance(kind, (T.NumericType, T.BooleanType))


def _is_numeric_array(kind: DataType) -> bool:
    from pyspark.sql import types as T

    while isinstance(kind, T.ArrayType):
        kind = kind.elementType
    return _is_numeric(kind)


def _expected_type(spec: Any) -> str | None:
    """What a column must be for a ColSpec: 'numeric', 'string', 'array', or None (not checked)."""
    name = str(getattr(spec.type, "name", spec.type)).lower()
    if name in _NUMERIC_SPECS or name == "boolean":
        return "numeric"
    if name == "string":
        return "string"
    if spec.type.__class__.__name__ == "Array":
        return "array"
    return None


def _type_problem(expected: str, kind: DataType) -> str | None:
    from pyspark.sql import types as T

    ok = {
        "numeric": _is_numeric(kind),
        "string": isinstance(kind, T.StringType),
        "array": isinstance(kind, T.ArrayType),
        "numeric array": _is_numeric_array(kind) and isinstance(kind, T.ArrayType),
        "numeric or numeric array": _is_numeric(kind) or _is_numeric_array(kind),
    }[expected]
    return None if ok else f"expected {expected}, found {kind.simpleString()}"


def schema_problems(source: ScoringInput, resolved: ResolvedModel, plan: ScoringPlan) -> list[str]:
    """One line per offending column; empty when the input fits the model and the job."""
    schema = {f.name: f.dataType for f in source.schema.fields}
    problems: list[str] = []
    needed = [*plan.passthrough_columns, *plan.feature_columns]
    for name in dict.fromkeys(needed):
        if name not in schema:
            role = "feature" if name in plan.feature_columns else "key/pass-through/partition"
            problems.append(f"{name}: {role} column expected, not found")
    signature = resolved.signature
    inputs = signature.inputs if signature is not None else None
    features = [c for c in plan.feature_columns if c in schema]
    if inputs is not None and not inputs.is_tensor_spec():
        specs = dict(zip(plan.feature_columns, inputs.inputs, strict=False))
        for name in features:
            expected = _expected_type(specs[name]) if name in specs else None
            found = _type_problem(expected, schema[name]) if expected else None
            if found:
                problems.append(f"{name}: {found} (model input {specs[name].name!r})")
    elif inputs is not None:
        shape = tuple(int(d) for d in inputs.inputs[0].shape[1:]) if len(inputs.inputs) == 1 else ()
        width = math.prod(shape) if shape and all(d > 0 for d in shape) else None
        for name in features:
            found = _type_problem("numeric or numeric array", schema[name])
            if found:
                problems.append(f"{name}: {found} (the model takes a float tensor)")
        problems += _width_problems(source, features, schema, width)
    else:
        for name in features:
            found = _type_problem("numeric or numeric array", schema[name])
            if found:
                problems.append(f"{name}: {found}")
    if source.section is not None and not source.section.allow_extra_columns:
        used = {*needed, *(c for c in [source.partition_column] if c)}
        for name in schema:
            if name not in used:
                problems.append(f"{name}: not used by the job (input.allow_extra_columns is false)")
    return problems


def _width_problems(
    source: ScoringInput, features: Sequence[str], schema: dict[str, DataType], width: int | None
) -> list[str]:
    """Values per row against a tensor signature's row size: from the schema for scalar columns, from the
    first row for one array column (rows that differ later are quarantined one by one)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if width is None or not features:
        return []
    arrays = [c for c in features if isinstance(schema[c], T.ArrayType)]
    if not arrays:
        if len(features) != width:
            columns = ", ".join(features)
            return [f"{columns}: the model expects {width} values per row, found {len(features)} columns"]
        return []
    if len(arrays) == 1 and len(features) == 1:
        first = source.frame.select(F.size(F.col(arrays[0])).alias("n")).where("n >= 0").limit(1).collect()
        if first and first[0]["n"] != width:
            found = first[0]["n"]
            return [f"{arrays[0]}: expected arrays of {width} values, found {found} in the first row"]
    return []


def check_input_schema(
    source: ScoringInput, resolved: ResolvedModel, plan: ScoringPlan, cfg: ScoringJobConfig | None = None
) -> None:
    """Raise one :class:`SchemaMismatchError` listing every offending column, before anything is scored
    (``cfg``: the job's config, named in the message)."""
    problems = schema_problems(source, resolved, plan)
    if problems:
        job = f" and job {cfg.name!r}" if cfg is not None else ""
        raise SchemaMismatchError(
            f"input {source.describe()} does not fit model {resolved.ref.load_uri}{job}; "
            "nothing was scored or written:\n  - " + "\n  - ".join(problems)
        )
