"""The model server's wire format: length-prefixed frames of Arrow IPC over a Unix domain socket.

A request is one record batch: the decoded float32 features of up to ``max_batch_size`` rows as one
fixed-size-list column (a zero-copy view of the client's buffer), its id and row shape in the schema's
metadata. A response is one record batch of the model's outputs for exactly those rows (one column per
output array; whether the model returned an array, a dict or a tuple in the metadata) with the request's
timings, or an error. The server's first frame on a connection is a JSON hello naming what it serves.

Large arrays skip the socket: each side of a connection owns a :class:`SharedMemory` region (a memfd,
passed to the other side over the socket as it is created or grown) and writes the arrays of a frame of
at least ``min_bytes`` there, the frame then saying only where they lie. The writer reuses its region
for its next frame only after the other side is done with the last: a client sends its next request
after the response to the previous one, and a server has no second response to a connection before its
next request. So the server computes on the client's features in place, and the client copies the
outputs out before it returns. A memfd is not a file in ``/dev/shm`` (so not bounded by a container's
small one) and is freed with the last process that maps it, kill -9 included.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.udfs.arrow_tensor import ModelOutput

PROTOCOL = 2
_ALIGN = 64  # each array of a frame in shared memory starts on a cache line
_LENGTH = struct.Struct("<Q")


class ServerGoneError(ConnectionError):
    """The other end closed the connection (or it broke) before a whole frame arrived."""


class SharedMemory:
    """One side's region of a connection: written by its owner (:meth:`place`), mapped by the other side
    from the memfd the owner sends (:meth:`attach`)."""

    def __init__(self) -> None:
        self.mapping: mmap.mmap | None = None
        self.refused = ""  # why this side cannot make regions (memfds refused): its frames use the socket

    @staticmethod
    def available() -> bool:
        return hasattr(os, "memfd_create") and hasattr(socket, "send_fds")

    def place(self, arrays: list[np.ndarray[Any, Any]]) -> tuple[list[int], int | None]:
        """Copies ``arrays`` into the region (grown when they do not fit); their offsets, and the fd of a
        new region that must travel with the frame (``None`` when the current one is reused)."""
        offsets, end = [], 0
        for array in arrays:
            offsets.append(end)
            end += -(-array.nbytes // _ALIGN) * _ALIGN
        fd = None
        if self.mapping is None or len(self.mapping) < end:
            # Grown to twice its size at least, so that a stream of growing frames maps few regions.
            size = max(end, 2 * len(self.mapping) if self.mapping is not None else 0, mmap.PAGESIZE)
            size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            fd = os.memfd_create("batchscore-model-frame", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            self.mapping = mmap.mmap(fd, size)  # the old one is unmapped once no array views it
        for array, offset in zip(arrays, offsets, strict=True):
            view = np.frombuffer(self.mapping, array.dtype, array.size, offset).reshape(array.shape)
            np.copyto(view, array, casting="no")
        return offsets, fd

    def attach(self, fd: int) -> None:
        """Maps the other side's new region (and closes ``fd``: the mapping keeps the memory)."""
        try:
            self.mapping = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def view(self, offset: int, dtype: str, shape: list[int]) -> np.ndarray[Any, Any]:
        """An array the other side placed, in place (valid until that side's next frame)."""
        if self.mapping is None:
            raise ValueError("a frame refers to shared memory that was never sent")
        count = int(np.prod(shape))
        return np.frombuffer(self.mapping, np.dtype(dtype), count, offset).reshape(shape)


def send_frame(sock: socket.socket, payload: bytes | pa.Buffer, fd: int | None = None) -> None:
    """One frame: its length (with ``fd``, a memfd for the other side, then closed here), then its bytes
    (an Arrow buffer is sent without a copy)."""
    if fd is None:
        sock.sendall(_LENGTH.pack(len(payload)))
    else:
        try:
            socket.send_fds(sock, [_LENGTH.pack(len(payload))], [fd])
        finally:
            os.close(fd)
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


def recv_frame(sock: socket.socket, shared: SharedMemory | None = None) -> bytearray:
    """The next frame's bytes; :class:`ServerGoneError` when the connection ends first. With ``shared``,
    a memfd that comes with the frame becomes the other side's region."""
    if shared is None:
        head = _recv_exactly(sock, _LENGTH.size)
    else:
        data, fds, _, _ = socket.recv_fds(sock, _LENGTH.size, 1)
        if not data:
            raise ServerGoneError("connection closed")
        for fd in fds:
            shared.attach(fd)
        head = bytearray(data) + (
            _recv_exactly(sock, _LENGTH.size - len(data)) if len(data) < _LENGTH.size else b""
        )
    (size,) = _LENGTH.unpack(head)
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


def _placed(
    arrays: list[np.ndarray[Any, Any]], shared: SharedMemory | None, min_bytes: int | None
) -> tuple[list[int] | None, int | None]:
    """Where ``arrays`` lie in ``shared`` once placed there (``None``: they travel in the frame), and the
    fd of a new region."""
    if shared is None or min_bytes is None or sum(a.nbytes for a in arrays) < max(min_bytes, 1):
        return None, None
    if shared.refused or any(a.dtype.kind not in "biuf" for a in arrays):  # raw bytes of numbers only
        return None, None
    try:
        return shared.place(arrays)
    except OSError as exc:  # no memfd here (a sandbox, a memory limit): this side keeps to the socket
        shared.refused = f"{type(exc).__name__}: {exc}"
        return None, None


def encode_request(
    request_id: int,
    features: np.ndarray[Any, Any],
    *,
    shared: SharedMemory | None = None,
    min_bytes: int | None = None,
) -> tuple[pa.Buffer, int | None]:
    """The request's frame, and the fd of a new shared region to send with it (or ``None``)."""
    features = features.astype(np.float32, copy=False)
    meta = {"id": str(request_id), "shape": json.dumps(list(features.shape[1:]))}
    offsets, fd = _placed([features], shared, min_bytes)
    if offsets is not None:
        meta["shared"] = json.dumps([offsets[0], int(features.shape[0])])
        column = pa.nulls(0, pa.int8())
    else:
        column = _column(features)
    return _ipc(pa.RecordBatch.from_arrays([column], names=["x"]).replace_schema_metadata(meta)), fd


def decode_request(frame: bytearray, shared: SharedMemory | None = None) -> tuple[int, np.ndarray[Any, Any]]:
    """``(request id, float32 features)``; features in shared memory are a view of it, not a copy."""
    batch = _read_ipc(frame)
    meta = {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}
    shape = json.loads(meta["shape"])
    if "shared" in meta:
        if shared is None:
            raise ValueError("a request in shared memory on a connection without it")
        offset, rows = json.loads(meta["shared"])
        return int(meta["id"]), shared.view(offset, "float32", [rows, *shape])
    return int(meta["id"]), _array(batch.column(0), shape, "float32")


def encode_response(
    request_id: int,
    output: ModelOutput | None,
    info: dict[str, Any],
    error: str | None = None,
    *,
    shared: SharedMemory | None = None,
    min_bytes: int | None = None,
) -> tuple[pa.Buffer, int | None]:
    """The outputs of one request (or ``error``: ``kind: message``) and its timings ``info``; and the fd
    of a new shared region to send with it (or ``None``)."""
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
        "rows": str(len(arrays[0]) if arrays else 0),
    }
    arrays = [np.ascontiguousarray(a) for a in arrays]
    offsets, fd = _placed(arrays, shared, min_bytes)
    if offsets is not None:
        meta["shared"] = json.dumps(offsets)
        columns = [pa.nulls(0, pa.int8()) for _ in arrays]
    else:
        columns = [_column(a) for a in arrays]
    fields = names or ["none"]
    batch = pa.RecordBatch.from_arrays(columns or [pa.nulls(0, pa.int8())], names=fields)
    return _ipc(batch.replace_schema_metadata(meta)), fd


def decode_response(
    frame: bytearray, shared: SharedMemory | None = None
) -> tuple[int, ModelOutput | None, dict[str, Any], str]:
    """``(request id, outputs or None, info, error)``; outputs in shared memory are copied out of it."""
    batch = _read_ipc(frame)
    meta = {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}
    info: dict[str, Any] = json.loads(meta["info"])
    if meta["kind"] == "error":
        return int(meta["id"]), None, info, meta["error"]
    shapes, dtypes = json.loads(meta["shapes"]), json.loads(meta["dtypes"])
    if "shared" in meta:
        if shared is None:
            raise ValueError("a response in shared memory on a connection without it")
        rows = int(meta["rows"])
        arrays = [
            shared.view(offset, dtypes[i], [rows, *shapes[i]]).copy()
            for i, offset in enumerate(json.loads(meta["shared"]))
        ]
    else:
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
