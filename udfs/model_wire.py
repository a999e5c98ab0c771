"""The model server's wire format: length-prefixed frames of Arrow IPC over a Unix domain socket.

A request is one record batch: the decoded float32 features of up to ``max_batch_size`` rows as one
fixed-size-list column (a zero-copy view of the client's buffer), its id and row shape in the schema's
metadata. A response is one record batch of the model's outputs for exactly those rows (one column per
output array; whether the model returned an array, a dict or a tuple in the metadata) with the request's
timings, or an error. The server's first frame on a connection is a JSON hello naming what it serves.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.udfs.arrow_tensor import ModelOutput

PROTOCOL = 1
_LENGTH = struct.Struct("<Q")


class ServerGoneError(ConnectionError):
    """The other end closed the connection (or it broke) before a whole frame arrived."""


def send_frame(sock: socket.socket, payload: bytes | pa.Buffer) -> None:
    """One frame: its length, then its bytes (an Arrow buffer is sent without a copy)."""
    sock.sendall(_LENGTH.pack(len(payload)))
    sock.sendall(memoryview(payload))


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise ServerGoneError("connection closed")
        got += n
    return buffer


def recv_frame(sock: socket.socket) -> bytearray:
    """The next frame's bytes; :class:`ServerGoneError` when the connection ends first."""
    (size,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    return _recv_exactly(sock, size)


def _ipc(batch: pa.RecordBatch) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue()


def _read_ipc(frame: bytearray) -> pa.RecordBatch:
    return pa.ipc.open_stream(pa.py_buffer(frame)).read_next_batch()


def _column(array: np.ndarray[Any, Any]) -> pa.Array:
    """``array`` (rows, ...) as an Arrow column: primitive for 1-D, else a fixed-size list per row."""
    flat = np.ascontiguousarray(array).reshape(-1)
    values = pa.array(flat)
    if array.ndim == 1:
        return values
    width = int(np.prod(array.shape[1:]))
    return pa.FixedSizeListArray.from_arrays(values, width)


def _array(column: pa.Array, shape: list[int], dtype: str) -> np.ndarray[Any, Any]:
    """A column of :func:`_column` as a numpy array shaped ``(rows, *shape)`` (no copy where Arrow allows)."""
    values = column.flatten() if pa.types.is_fixed_size_list(column.type) else column
    flat: np.ndarray[Any, Any] = values.to_numpy(zero_copy_only=False)
    shaped: np.ndarray[Any, Any] = flat.astype(dtype, copy=False).reshape(len(column), *shape)
    return shaped


def encode_request(request_id: int, features: np.ndarray[Any, Any]) -> pa.Buffer:
    meta = {"id": str(request_id), "shape": json.dumps(list(features.shape[1:]))}
    column = _column(features.astype(np.float32, copy=False))
    return _ipc(pa.RecordBatch.from_arrays([column], names=["x"]).replace_schema_metadata(meta))


def decode_request(frame: bytearray) -> tuple[int, np.ndarray[Any, Any]]:
    batch = _read_ipc(frame)
    meta = {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}
    return int(meta["id"]), _array(batch.column(0), json.loads(meta["shape"]), "float32")


def encode_response(
    request_id: int, output: ModelOutput | None, info: dict[str, Any], error: str | None = None
) -> pa.Buffer:
    """The outputs of one request (or ``error``: ``kind: message``) and its timings ``info``."""
    arrays: list[np.ndarray[Any, Any]]
    if output is None:
        kind, names, arrays = "error", [], []
    elif isinstance(output, np.ndarray):
        kind, names, arrays = "array", ["0"], [output]
    elif isinstance(output, dict):
        kind, names, arrays = "dict", list(output), [np.asarray(v) for v in output.values()]
    else:
        kind, names, arrays = "list", [str(i) for i in range(len(output))], [np.asarray(v) for v in output]
    meta = {
        "id": str(request_id),
        "kind": kind,
        "names": json.dumps(names),
        "shapes": json.dumps([list(a.shape[1:]) for a in arrays]),
        "dtypes": json.dumps([a.dtype.name for a in arrays]),
        "info": json.dumps(info),
        "error": error or "",
    }
    columns = [_column(a) for a in arrays] or [pa.nulls(0, pa.int8())]
    fields = names or ["none"]
    return _ipc(pa.RecordBatch.from_arrays(columns, names=fields).replace_schema_metadata(meta))


def decode_response(frame: bytearray) -> tuple[int, ModelOutput | None, dict[str, Any], str]:
    """``(request id, outputs or None, info, error)``."""
    batch = _read_ipc(frame)
    meta = {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}
    info: dict[str, Any] = json.loads(meta["info"])
    if meta["kind"] == "error":
        return int(meta["id"]), None, info, meta["error"]
    shapes, dtypes = json.loads(meta["shapes"]), json.loads(meta["dtypes"])
    arrays = [_array(batch.column(i), shapes[i], dtypes[i]) for i in range(batch.num_columns)]
    output: ModelOutput
    if meta["kind"] == "array":
        output = arrays[0]
    elif meta["kind"] == "dict":
        output = dict(zip(json.loads(meta["names"]), arrays, strict=True))
    else:
        output = arrays
    return int(meta["id"]), output, info, ""


def encode_hello(hello: dict[str, Any]) -> bytes:
    return json.dumps({"protocol": PROTOCOL, **hello}).encode()


def decode_hello(frame: bytearray) -> dict[str, Any]:
    hello: dict[str, Any] = json.loads(frame.decode())
    return hello
