"""The model server's dynamic batching, out-of-memory back-off and per-request errors, in process: a real
``ModelServer`` on a Unix socket with a real torch module, real concurrent clients on the wire (no Spark)."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import numpy as np
import pytest
import torch

from batchscore.udfs.model_server import ModelServer, ServerSpec, process_start
from batchscore.udfs.model_wire import (
    SharedMemory,
    decode_hello,
    decode_response,
    encode_request,
    recv_frame,
    send_frame,
)
from batchscore.udfs.predictors import TorchPredictor
from batchscore.udfs.spec import ModelRef, OutputField, ScoringPlan, Sharing
from tests.test_runtime import FlakyOnLargeBatches

WIDTH = 2  # FlakyOnLargeBatches' linear model


class Picky(FlakyOnLargeBatches):
    """``FlakyOnLargeBatches`` (a real ``torch.OutOfMemoryError`` above ``limit`` rows, the rows of every
    call recorded) that also raises a ``ValueError`` on any batch holding a NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.limit and torch.isnan(x).any():
            self.sizes.append(x.shape[0])
            raise ValueError("a NaN feature")
        return super().forward(x)


def _server(module: Picky, max_batch: int, delay_ms: float) -> tuple[ModelServer, str]:
    address = f"\0batchscore-test-{uuid.uuid4().hex}"
    plan = ScoringPlan(
        feature_columns=tuple(f"f{i}" for i in range(WIDTH)), passthrough_columns=(),
        outputs=(OutputField("score", "float32"),), batch_size=8, device="cpu",
        sharing=Sharing(max_batch_size=max_batch, max_queue_delay_ms=delay_ms, idle_timeout_s=60),
    )  # fmt: skip
    ref = ModelRef("picky", "picky", None, None, None, "picky", "pytorch", "", "")
    spec = ServerSpec(ref, plan, "cpu", address, os.getpid(), process_start(os.getpid()))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(16)
    server = ModelServer(spec, TorchPredictor(module, "cpu", plan.feature_columns, ()), listener)
    threading.Thread(target=server.accept_forever, daemon=True).start()
    threading.Thread(target=server.compute_forever, daemon=True).start()
    return server, address


def _client(address: str, requests: list[np.ndarray], answers: list, barrier: threading.Barrier) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    sock.settimeout(30)
    outbound, inbound = SharedMemory(), SharedMemory()
    assert "server" in decode_hello(recv_frame(sock, inbound))
    barrier.wait()
    for index, features in enumerate(requests):
        payload, fd = encode_request(index, features, shared=outbound, min_bytes=0)
        send_frame(sock, payload, fd)
        answers.append(decode_response(recv_frame(sock, inbound), inbound))
    sock.close()


def _run(address: str, per_client: list[list[np.ndarray]]) -> list[list]:
    answers: list[list] = [[] for _ in per_client]
    barrier = threading.Barrier(len(per_client))
    threads = [
        threading.Thread(target=_client, args=(address, reqs, out, barrier))
        for reqs, out in zip(per_client, answers, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def _stop(server: ModelServer) -> None:
    server.stopping.set()
    server.listener.close()


def _expected(module: Picky, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module.inner(torch.from_numpy(features)).numpy()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_concurrent_requests_are_batched_together_and_split_back() -> None:
    module = Picky(limit=10**9)
    server, address = _server(module, max_batch=64, delay_ms=200.0)
    rng = np.random.default_rng(0)
    per_client = [[rng.standard_normal((16, WIDTH), dtype=np.float32) for _ in range(3)] for _ in range(4)]
    answers = _run(address, per_client)
    for requests, got in zip(per_client, answers, strict=True):
        assert [a[0] for a in got] == [0, 1, 2] and all(a[3] == "" for a in got)
        for features, (_, output, _, _) in zip(requests, got, strict=True):
            np.testing.assert_allclose(output, _expected(module, features), rtol=1e-6)
    # Four clients of 16 rows each, waiting up to 200 ms for each other: batches of more than one request.
    assert max(module.sizes) > 16 and max(module.sizes) <= 64
    assert max(a[2]["batch_rows"] for got in answers for a in got) > 16
    _stop(server)


def test_out_of_memory_halves_the_servers_batch_and_every_request_is_answered() -> None:
    module = Picky(limit=20)
    server, address = _server(module, max_batch=64, delay_ms=200.0)
    rng = np.random.default_rng(1)
    per_client = [[rng.standard_normal((16, WIDTH), dtype=np.float32) for _ in range(2)] for _ in range(4)]
    answers = _run(address, per_client)
    for requests, got in zip(per_client, answers, strict=True):
        for features, (_, output, _, error) in zip(requests, got, strict=True):
            assert error == ""
            np.testing.assert_allclose(output, _expected(module, features), rtol=1e-6)
    assert any(size > 20 for size in module.sizes), "a coalesced batch ran out of memory"
    assert server.loop.stats["oom_backoffs"] >= 1
    assert max(a[2]["oom_backoffs"] for got in answers for a in got) >= 1
    _stop(server)


def test_a_request_the_model_rejects_fails_alone() -> None:
    module = Picky(limit=10**9)
    server, address = _server(module, max_batch=64, delay_ms=200.0)
    rng = np.random.default_rng(2)
    per_client = [[rng.standard_normal((16, WIDTH), dtype=np.float32)] for _ in range(4)]
    per_client[2][0][5, 1] = np.nan
    answers = _run(address, per_client)
    for index, got in enumerate(answers):
        (_, output, _, error) = got[0]
        if index == 2:
            assert output is None and error.startswith("model: ValueError: a NaN feature"), error
        else:
            assert error == ""
            np.testing.assert_allclose(output, _expected(module, per_client[index][0]), rtol=1e-6)
    _stop(server)
