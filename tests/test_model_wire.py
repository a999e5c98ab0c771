"""The model server's wire: frames over a Unix socket, large arrays through shared memory (no Spark)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pyarrow as pa
import pytest

from batchscore.udfs.model_wire import (
    SharedMemory,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    recv_frame,
    send_frame,
)

pytestmark = pytest.mark.skipif(not SharedMemory.available(), reason="no memfd on this platform")


def _meta(frame: bytearray) -> dict[str, str]:
    batch = pa.ipc.open_stream(pa.py_buffer(frame)).read_next_batch()
    return {k.decode(): v.decode() for k, v in (batch.schema.metadata or {}).items()}


@pytest.fixture
def pair():
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield client, server
    client.close()
    server.close()


def _request(pair, regions, features, min_bytes):
    client, server = pair
    outbound, inbound = regions
    payload, fd = encode_request(7, features, shared=outbound, min_bytes=min_bytes)
    send_frame(client, payload, fd)
    frame = recv_frame(server, inbound)
    return frame, decode_request(frame, inbound)


def test_a_large_request_is_read_in_place_from_the_clients_memory(pair) -> None:
    outbound, inbound = SharedMemory(), SharedMemory()
    features = np.random.default_rng(0).standard_normal((1000, 4, 8), dtype=np.float32)
    frame, (request_id, got) = _request(pair, (outbound, inbound), features, 1024)
    assert request_id == 7 and "shared" in _meta(frame)
    assert len(frame) < 2048, "the frame carries where the rows are, not the rows"
    np.testing.assert_array_equal(got, features)
    assert got.shape == (1000, 4, 8) and got.dtype == np.float32
    # In place: what the client writes into its region next is what the server's view shows.
    assert outbound.mapping is not None
    np.frombuffer(outbound.mapping, np.float32, 1)[:] = 123.0
    assert got[0, 0, 0] == 123.0


def test_a_region_grows_and_small_frames_stay_on_the_socket(pair) -> None:
    outbound, inbound = SharedMemory(), SharedMemory()
    rng = np.random.default_rng(1)
    for rows in (300, 5000, 40, 20000):  # grows twice; the 40-row request is under the threshold
        features = rng.standard_normal((rows, 16), dtype=np.float32)
        frame, (_, got) = _request(pair, (outbound, inbound), features, 16 * 4 * 100)
        assert ("shared" in _meta(frame)) == (rows >= 100), rows
        np.testing.assert_array_equal(got, features)
    assert inbound.mapping is not None and len(inbound.mapping) >= 20000 * 16 * 4
    # float64 features are sent as float32, as over the socket
    frame, (_, got) = _request(pair, (outbound, inbound), np.ones((200, 16)), 0)
    assert got.dtype == np.float32 and "shared" in _meta(frame)


def test_responses_are_copied_out_before_the_region_is_reused(pair) -> None:
    client, server = pair
    outbound, inbound = SharedMemory(), SharedMemory()  # the server's, and the client's map of it
    first = {"embedding": np.arange(4096 * 8, dtype=np.float32).reshape(4096, 8),
             "label": np.arange(4096, dtype=np.int64), "flag": np.ones(4096, dtype=bool)}  # fmt: skip
    got = []
    for output in (first, {k: v[::-1].copy() for k, v in first.items()}):
        payload, fd = encode_response(3, output, {"queue_ms": 1.0}, shared=outbound, min_bytes=1)
        send_frame(server, payload, fd)
        frame = recv_frame(client, inbound)
        assert json.loads(_meta(frame)["shared"]), "placed in shared memory"
        request_id, decoded, info, error = decode_response(frame, inbound)
        assert (request_id, info, error) == (3, {"queue_ms": 1.0}, "")
        got.append(decoded)
    for key, values in first.items():  # the second response did not overwrite the first one's arrays
        np.testing.assert_array_equal(got[0][key], values)
        np.testing.assert_array_equal(got[1][key], values[::-1])
        assert got[0][key].dtype == values.dtype


def test_errors_and_odd_outputs_travel_in_the_frame(pair) -> None:
    client, server = pair
    outbound, inbound = SharedMemory(), SharedMemory()
    payload, fd = encode_response(4, None, {}, "model: ValueError: bad", shared=outbound, min_bytes=0)
    assert fd is None
    send_frame(server, payload)
    assert decode_response(recv_frame(client, inbound), inbound)[1:] == (None, {}, "model: ValueError: bad")
    tuple_out = [np.linspace(0, 1, 50, dtype=np.float16), np.zeros((50, 3), dtype=np.uint8)]
    payload, fd = encode_response(5, tuple_out, {}, shared=outbound, min_bytes=0)
    send_frame(server, payload, fd)
    _, decoded, _, _ = decode_response(recv_frame(client, inbound), inbound)
    assert isinstance(decoded, list) and [a.dtype for a in decoded] == [np.float16, np.uint8]
    np.testing.assert_array_equal(decoded[0], tuple_out[0])


def test_a_frame_naming_shared_memory_that_never_came_is_refused(pair) -> None:
    client, server = pair
    payload, fd = encode_request(1, np.ones((10, 2), np.float32), shared=SharedMemory(), min_bytes=0)
    assert fd is not None
    send_frame(client, payload)  # the memfd is "lost": the frame alone arrives
    import os

    os.close(fd)
    frame = recv_frame(server, SharedMemory())
    with pytest.raises(ValueError, match="never sent"):
        decode_request(frame, SharedMemory())
    with pytest.raises(ValueError, match="without it"):
        decode_request(frame, None)


def test_a_sandbox_that_refuses_memfds_keeps_the_rows_on_the_socket(pair, monkeypatch) -> None:
    import errno
    import os

    def refuse(*_: object) -> int:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "memfd_create", refuse)  # as a seccomp profile that forbids memfd_create
    outbound, inbound = SharedMemory(), SharedMemory()
    features = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    for _ in range(2):
        frame, (_, got) = _request(pair, (outbound, inbound), features, 0)
        assert "shared" not in _meta(frame)
        np.testing.assert_array_equal(got, features)
    assert "Operation not permitted" in outbound.refused
