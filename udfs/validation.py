"""Row-level input checks inside the workers: which rows of a batch the model must not see, and why.

A row is invalid when a required feature is null, NaN or infinite, when a finite feature is beyond the range
of the float dtype the model computes in (1e39 is infinity in float32), when an array feature has the wrong
number of values, or when an output key is null (it could not be told apart from other rows, nor replaced on
a rerun). Rows whose model outputs are NaN or infinite are invalid too (:mod:`udfs.runtime` finds them).
Checking is per column and cheap when a column is clean (its null count is Arrow metadata; a finite sum
proves no NaN/inf), so the common case costs one pass of ``numpy.sum`` per column; per-row reasons are built
only for the rows that fail.

With ``on_invalid: quarantine`` the scoring loop scores the valid rows and emits the invalid ones with a
reason and the raw row as JSON (the driver sends them to the quarantine table); with ``fail`` the task
fails on the first invalid row, naming its key and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

REASON_COLUMN = "_invalid_reason"
RAW_COLUMN = "_invalid_row"
# Workers hand both back to the JVM in one struct column, null for every scored row: Spark turns each Arrow
# column into row values one call per row, and a null struct is one call where two null strings were two,
# a visible share of the JVM's work per row. The jobs flatten it into the two columns above. The struct's
# third field carries a task's stats (udfs.stats) on one row of the task's last batch, so they reach the
# driver with the rows, on any kind of Spark session, counted once however often a task is retried.
INVALID_COLUMN = "_invalid"
INVALID_FIELDS = ("reason", "row", "stats")
INVALID_TYPE = pa.struct([(name, pa.string()) for name in INVALID_FIELDS])
ERROR_MARKER = "BATCHSCORE_ERROR"  # the driver finds worker errors meant for users by this prefix


class InvalidRowsError(ValueError):
    """A row failed validation and the job's policy is ``on_invalid: fail``."""


def worker_error(kind: str, message: str) -> str:
    """A message the driver can pick out of Spark's task failure text: ``BATCHSCORE_ERROR[kind]: …``."""
    return f"{ERROR_MARKER}[{kind}]: {message}"


def has_nulls(batch: pa.RecordBatch, columns: Sequence[str]) -> bool:
    """Whether any of ``columns`` holds a null, at any depth (Arrow metadata only, no pass over values)."""
    return any(_holds_null(batch.column(name)) for name in columns)


def _holds_null(column: pa.Array) -> bool:
    if isinstance(column, pa.ChunkedArray):
        return any(_holds_null(chunk) for chunk in column.chunks)
    if column.null_count:
        return True
    kind = column.type
    if pa.types.is_struct(kind):
        return any(_holds_null(column.field(i)) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _holds_null(column.flatten())
    return False


def _float_values(array: pa.Array) -> npt.NDArray[Any] | None:
    if pa.types.is_floating(array.type):
        values: npt.NDArray[Any] = array.to_numpy(zero_copy_only=False)
        return values
    return None


def _dtype_limit(dtype: str | None) -> float | None:
    """The largest finite magnitude of a float dtype ("float32", "float16"...), None for no check."""
    return float(np.finfo(np.dtype(dtype)).max) if dtype else None


def _out_of_range(floats: npt.NDArray[Any], limit: float | None) -> npt.NDArray[np.bool_] | None:
    """Mask of the finite values beyond ``limit``, or None when there are none (one max() pass)."""
    if limit is None or floats.size == 0:
        return None
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(floats)
        if not np.nanmax(np.where(np.isfinite(magnitude), magnitude, 0.0)) > limit:
            return None
        beyond: npt.NDArray[np.bool_] = np.isfinite(magnitude) & (magnitude > limit)
        return beyond


def _column_problems(
    column: pa.Array, name: str, width: int | None, rows: int, limit: float | None = None
) -> dict[int, str]:
    """Row index -> problem for the rows of ``column`` that the model cannot take; empty when clean.
    ``limit``: the largest magnitude the model's dtype holds (see :func:`_dtype_limit`)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    problems: dict[int, str] = {}
    kind = column.type
    if column.null_count:
        for index in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
            problems[int(index)] = f"{name}: null"
    if pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            child = _column_problems(column.field(i), f"{name}.{kind.field(i).name}", None, rows, limit)
            for row_index, problem in child.items():
                problems.setdefault(row_index, problem)
        return problems
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        if not pa.types.is_fixed_size_list(kind):
            lengths = np.diff(column.offsets.to_numpy())
            expected = width if width is not None else (int(np.bincount(lengths).argmax()) if rows else 0)
            for row in np.flatnonzero(lengths != expected):
                if int(row) not in problems:
                    problems[int(row)] = f"{name}: {int(lengths[row])} values, expected {expected}"
        values = column.flatten()
        bad_values = _bad_values(values, limit)
        if bad_values is not None:
            parents = pc.list_parent_indices(column).to_numpy()
            for index in np.flatnonzero(bad_values):
                problems.setdefault(
                    int(parents[index]), f"{name}: null, NaN, infinite or out-of-range value in the array"
                )
        return problems
    floats = _float_values(column)
    if floats is not None and not math.isfinite(float(np.sum(floats, dtype=np.float64))):
        for row in np.flatnonzero(~np.isfinite(floats)):
            if int(row) not in problems:
                problems[int(row)] = f"{name}: {'NaN' if np.isnan(floats[row]) else 'infinite'}"
    beyond = _out_of_range(floats, limit) if floats is not None else None
    if floats is not None and beyond is not None:
        for row in np.flatnonzero(beyond):
            problems.setdefault(
                int(row), f"{name}: {floats[row]:g} is beyond the model's float range (+-{limit:.4g})"
            )
    return problems


def _bad_values(values: pa.Array, limit: float | None = None) -> npt.NDArray[np.bool_] | None:
    """Mask of the null/NaN/infinite (or beyond ``limit``) elements of a flat array, or None when none are."""
    bad = values.is_null().to_numpy(zero_copy_only=False) if values.null_count else None
    floats = _float_values(values)
    if floats is not None and not math.isfinite(float(np.sum(floats, dtype=np.float64))):
        non_finite = ~np.isfinite(floats)  # nulls read as NaN here
        bad = non_finite if bad is None else bad | non_finite
    beyond = _out_of_range(floats, limit) if floats is not None else None
    if beyond is not None:
        bad = beyond if bad is None else bad | beyond
    return bad if bad is not None and bad.any() else None


def find_invalid(
    batch: pa.RecordBatch,
    feature_columns: Sequence[str],
    row_shape: Sequence[int] = (),
    *,
    key_columns: Sequence[str] = (),
    input_dtype: str | None = None,
) -> dict[int, str]:
    """Row index -> reason for every row of ``batch`` the model must not score (empty when all are valid).

    ``row_shape`` (from a tensor signature) gives the expected length of a single array feature column;
    ``key_columns`` must not be null; ``input_dtype`` is the float dtype the model computes in.
    """
    width = int(np.prod(row_shape)) if row_shape and len(feature_columns) == 1 else None
    limit = _dtype_limit(input_dtype)
    reasons: dict[int, list[str]] = {}
    for name in key_columns:
        column = batch.column(name)
        if column.null_count:
            for row in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
                reasons.setdefault(int(row), []).append(f"{name}: null key")
    for name in feature_columns:
        problems = _column_problems(batch.column(name), name, width, batch.num_rows, limit)
        for index, problem in problems.items():
            reasons.setdefault(index, []).append(problem)
    return {row: "; ".join(found) for row, found in sorted(reasons.items())}


def raw_rows_json(batch: pa.RecordBatch, rows: Sequence[int], columns: Sequence[str]) -> list[str]:
    """The given rows of ``batch`` (its ``columns`` only) as JSON objects; NaN and infinity as strings."""
    selected = batch.select(list(columns)).take(pa.array(rows, type=pa.int64())).to_pylist()
    return [json.dumps(_plain(row), default=str, allow_nan=False) for row in selected]


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": strict JSON has no literal for them
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
