"""Arrow <-> numpy conversion for scoring, without a pandas round trip."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from udfs.spec import OutputField


def features_to_numpy(batch: pa.RecordBatch, columns: Sequence[str]) -> npt.NDArray[np.float32]:
    """Copy numeric feature columns into one contiguous ``(rows, features)`` float32 array.

    Each column is written straight into its slot of a preallocated array, so the only copy is the cast.
    """
    out = np.empty((batch.num_rows, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        column = batch.column(name)
        out[:, j] = column.to_numpy(zero_copy_only=False)
    return out


def predictions_to_arrow(predictions: npt.NDArray[np.generic], field: OutputField) -> pa.Array:
    """Turn the model's ``(rows, k)`` output into the Arrow array for one output field."""
    matrix = predictions.reshape(predictions.shape[0], -1)
    if field.kind == "vector":
        values = np.ascontiguousarray(matrix, dtype=field.dtype)
        flat = pa.array(values.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1]).cast(pa.list_(flat.type))
    if field.index >= matrix.shape[1]:
        raise ValueError(
            f"output column {field.name!r} expects model output index {field.index}, "
            f"but the model returned {matrix.shape[1]} value(s) per row"
        )
    return pa.array(np.ascontiguousarray(matrix[:, field.index], dtype=field.dtype))
