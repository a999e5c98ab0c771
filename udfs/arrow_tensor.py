"""Arrow <-> numpy conversion for scoring, without a pandas round trip or per-row Python work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from batchscore.udfs.spec import OutputField

ModelOutput = npt.NDArray[Any] | Mapping[str, npt.NDArray[Any]] | Sequence[npt.NDArray[Any]]


def _list_values(column: pa.Array, name: str) -> npt.NDArray[Any]:
    """A list/fixed-size-list column of equal-length numeric lists as a ``(rows, length)`` array."""
    rows = len(column)
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
    else:
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        width = int(lengths[0]) if rows else 0
        if rows and not np.all(lengths == width):
            raise ValueError(
                f"feature column {name!r}: expected arrays of one length, found lengths "
                f"{int(lengths.min())}..{int(lengths.max())}"
            )
    values: npt.NDArray[Any] = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(rows, width)


def _column_blocks(column: pa.Array, name: str) -> list[npt.NDArray[Any]]:
    """A feature column as 2-D blocks: numeric -> (rows, 1), list -> (rows, k), struct -> its fields."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_struct(kind):
        blocks: list[npt.NDArray[Any]] = []
        for i in range(kind.num_fields):
            blocks += _column_blocks(column.field(i), f"{name}.{kind.field(i).name}")
        return blocks
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return [_list_values(column, name)]
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return [column.to_numpy(zero_copy_only=False).reshape(-1, 1)]
    raise TypeError(f"feature column {name!r}: expected a numeric, array or struct column, found {kind}")


def features_to_numpy(
    batch: pa.RecordBatch, columns: Sequence[str], row_shape: Sequence[int] = (), *, row_major: bool = False
) -> npt.NDArray[np.float32]:
    """The batch's feature columns as one contiguous float32 buffer, shaped ``(rows, features)``.

    Numeric columns fill a preallocated buffer column by column (one cast, no intermediate frame); the
    buffer is column-major (``F_CONTIGUOUS``), or row-major with ``row_major`` (for kernels that read rows,
    at the cost of strided writes). One array column (an embedding, an image) is
    reshaped in place to ``(rows, *row_shape)``, e.g. ``(rows, 3, 64, 64)``; several are laid side by side.
    """
    blocks = [block for name in columns for block in _column_blocks(batch.column(name), name)]
    rows = batch.num_rows
    with np.errstate(over="ignore"):  # a double beyond float32 becomes inf: the row checks name it
        if len(blocks) == 1:
            out = np.ascontiguousarray(blocks[0], dtype=np.float32)
        else:
            # Filled feature by feature: in the default column-major buffer each Arrow column is one
            # sequential write (much cheaper than strided writes into a row-major one), and torch's matmuls
            # consume the (rows, features) view without a copy; row-major for kernels that read rows.
            out = np.empty(
                (rows, sum(b.shape[1] for b in blocks)), dtype=np.float32, order="C" if row_major else "F"
            )
            offset = 0
            for block in blocks:
                out[:, offset : offset + block.shape[1]] = block
                offset += block.shape[1]
    if row_shape and tuple(out.shape[1:]) != tuple(row_shape):
        width = int(np.prod(row_shape))
        if out.shape[1] != width:
            raise ValueError(
                f"features have {out.shape[1]} values per row, the model expects {tuple(row_shape)}"
            )
        out = out.reshape(rows, *row_shape)
    return out


def arrow_type(field: OutputField) -> pa.DataType:
    """The Arrow type of an output column (what :func:`predictions_to_arrow` produces for it)."""
    if field.kind == "struct":
        return pa.struct([pa.field(c.name, arrow_type(c)) for c in field.children])
    base = pa.from_numpy_dtype(np.dtype(field.dtype))
    return pa.list_(base) if field.kind == "vector" else base


def _field_array(values: npt.NDArray[Any], field: OutputField) -> pa.Array:
    matrix = values.reshape(values.shape[0], -1)
    if field.kind == "vector":
        flat = pa.array(np.ascontiguousarray(matrix, dtype=field.dtype).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1]).cast(pa.list_(flat.type))
    if field.index >= matrix.shape[1]:
        raise ValueError(
            f"output column {field.name!r} expects model output index {field.index}, "
            f"but the model returned {matrix.shape[1]} value(s) per row"
        )
    return pa.array(np.ascontiguousarray(matrix[:, field.index], dtype=field.dtype))


def _named(output: ModelOutput, field: OutputField, position: int) -> npt.NDArray[Any]:
    if isinstance(output, Mapping):
        if field.name not in output:
            raise ValueError(
                f"the model returned outputs {sorted(output)}, expected one named {field.name!r}"
            )
        return np.asarray(output[field.name])
    if isinstance(output, np.ndarray):
        return output
    return np.asarray(output[position])


def predictions_to_arrow(output: ModelOutput, field: OutputField, position: int = 0) -> pa.Array:
    """The Arrow array of one output field, from an array, a dict of arrays or a tuple of arrays."""
    if field.kind == "struct":
        children = [predictions_to_arrow(output, child, i) for i, child in enumerate(field.children)]
        return pa.StructArray.from_arrays(children, names=[c.name for c in field.children])
    values = output if isinstance(output, np.ndarray) else _named(output, field, position)
    return _field_array(values, field)
