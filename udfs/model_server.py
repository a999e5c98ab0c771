"""The executor's model server: one process per (model version, device) on an executor, shared by its tasks.

Started by the first task that needs it (:mod:`udfs.model_client`) as ``python -m
batchscore.udfs.model_server SPEC``, in a session of its own so that it outlives Python worker recycling.
It loads the model once through the same cache and device code as a worker (:func:`udfs.scorer.
cached_predictor`), listens on a Unix domain socket, and batches concurrent requests the way Triton's dynamic
batcher does: a model batch takes requests until it holds ``max_batch_size`` rows or its first request has
waited ``max_queue_delay_ms``. One thread assembles the next batch (joins the rows, starts the copy to the
GPU) while another computes the current one. A CUDA out-of-memory halves the batch as in a worker
(:meth:`udfs.runtime.ScoringLoop.compute`). A model batch the model raises on is retried request by
request, so only the requests it rejects get the error. The server exits when its executor's process is
gone or after ``idle_timeout_s`` without a request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchscore.udfs import model_cache
from batchscore.udfs.model_wire import (
    SharedMemory,
    decode_request,
    encode_hello,
    encode_response,
    recv_frame,
    send_frame,
)
from batchscore.udfs.runtime import ModelOutOfMemoryError, ScoringLoop, prefetch
from batchscore.udfs.spec import ModelRef, ScoringPlan

log = logging.getLogger("batchscore.model_server")


@dataclass(frozen=True)
class ServerSpec:
    """What a server serves and how; written by the client that starts it, read once by the server."""

    ref: ModelRef
    plan: ScoringPlan  # the model's plan; its sharing settings are the server's
    device: str
    address: str  # the socket's name (a leading NUL: Linux's abstract namespace)
    executor_pid: int  # the executor's process: the server exits when it is gone
    executor_started: str  # its start time in /proc, so that a reused pid is not taken for it


def process_start(pid: int) -> str:
    """A process's start time (field 22 of /proc/PID/stat), '' when it is gone or unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass
class Pending:
    conn: Connection
    request_id: int
    features: np.ndarray[Any, Any]
    arrived: float

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


class Connection:
    """One client (a Python worker): the shared memory regions of its requests (``inbound``, mapped from
    the client's memfd) and of its responses (``outbound``, ours); responses are written under a lock."""

    def __init__(self, sock: socket.socket, shared_min_bytes: int | None) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.min_bytes = shared_min_bytes if SharedMemory.available() else None
        self.inbound = SharedMemory() if self.min_bytes is not None else None
        self.outbound = SharedMemory()

    def send(self, payload: Any) -> None:
        # A worker that went away has its task retried elsewhere.
        with self.lock, contextlib.suppress(OSError):
            send_frame(self.sock, payload)

    def respond(self, request_id: int, output: Any, info: dict[str, Any], error: str | None = None) -> None:
        with self.lock, contextlib.suppress(OSError):
            frame, fd = encode_response(
                request_id, output, info, error, shared=self.outbound, min_bytes=self.min_bytes
            )
            send_frame(self.sock, frame, fd)

    def receive(self) -> tuple[int, np.ndarray[Any, Any]]:
        return decode_request(recv_frame(self.sock, self.inbound), self.inbound)


class ModelServer:
    def __init__(self, spec: ServerSpec, predictor: Any, listener: socket.socket) -> None:
        assert spec.plan.sharing is not None
        self.spec = spec
        self.settings = spec.plan.sharing
        self.predictor = predictor
        self.listener = listener
        self.requests: queue.Queue[Pending] = queue.Queue()
        self.last_request = time.monotonic()
        self.stopping = threading.Event()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"
        self.batches = 0
        # The model's batch size is the server's: ScoringLoop.compute chunks by it and halves it on OOM.
        plan = dataclasses.replace(spec.plan, batch_size=self.settings.max_batch_size, arrow_batch_rows=0)
        self.loop = ScoringLoop(predictor, plan)

    def hello(self) -> dict[str, Any]:
        return {
            "server": self.server_id,
            "model": self.spec.ref.load_uri,
            "device": self.spec.device,
            "loads": model_cache.load_count(),
            "executor_pid": self.spec.executor_pid,
        }

    # Connections -----------------------------------------------------------------------------------------

    def accept_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = Connection(sock, self.settings.shared_memory_min_bytes)
            conn.send(encode_hello(self.hello()))
            threading.Thread(target=self.read_requests, args=(conn,), daemon=True).start()

    def read_requests(self, conn: Connection) -> None:
        try:
            while True:
                request_id, features = conn.receive()
                self.last_request = time.monotonic()
                self.requests.put(Pending(conn, request_id, features, time.perf_counter()))
        except (OSError, ValueError, KeyError):  # closed, or not our protocol
            conn.sock.close()

    # Batching --------------------------------------------------------------------------------------------

    def groups(self) -> Iterator[tuple[list[Pending], Any]]:
        """Model batches of requests: ``(requests, model inputs)``."""
        carry: Pending | None = None
        limit, delay = self.settings.max_batch_size, self.settings.max_queue_delay_ms / 1000.0
        while not self.stopping.is_set():
            if carry is None:
                try:
                    carry = self.requests.get(timeout=0.5)
                except queue.Empty:
                    continue
            group, rows, carry = [carry], carry.rows, None
            deadline = group[0].arrived + delay
            while rows < limit:
                wait = deadline - time.perf_counter()
                try:
                    nxt = self.requests.get(timeout=wait) if wait > 0 else self.requests.get_nowait()
                except queue.Empty:
                    break
                if rows + nxt.rows > limit:
                    carry = nxt  # starts the next batch
                    break
                group.append(nxt)
                rows += nxt.rows
            features = group[0].features if len(group) == 1 else np.concatenate([p.features for p in group])
            yield group, self.predictor.inputs_from_features(features)

    def compute_forever(self) -> None:
        for group, inputs in prefetch(self.groups(), 1):
            rows = sum(p.rows for p in group)
            started = time.perf_counter()
            try:
                output = self.loop.compute(inputs, rows)
            except Exception as exc:
                if len(group) > 1 and not isinstance(exc, ModelOutOfMemoryError):
                    for pending in group:  # only the requests the model rejects get the error
                        self.compute_alone(pending)
                else:
                    self.fail(group, exc)
                continue
            self.batches += 1
            self.respond(group, output, started, time.perf_counter(), rows)

    def compute_alone(self, pending: Pending) -> None:
        started = time.perf_counter()
        try:
            inputs = self.predictor.inputs_from_features(pending.features)
            output = self.loop.compute(inputs, pending.rows)
        except Exception as exc:
            self.fail([pending], exc)
            return
        self.batches += 1
        self.respond([pending], output, started, time.perf_counter(), pending.rows)

    def respond(self, group: list[Pending], output: Any, started: float, done: float, rows: int) -> None:
        offset = 0
        for pending in group:
            part = _slice(output, offset, offset + pending.rows)
            offset += pending.rows
            info = {
                "queue_ms": (started - pending.arrived) * 1000.0,
                "compute_ms": (done - started) * 1000.0,
                "batch_rows": rows,
                "server": self.server_id,
                "loads": model_cache.load_count(),
                "batches": self.batches,
                "oom_backoffs": self.loop.stats["oom_backoffs"],
            }
            pending.conn.respond(pending.request_id, part, info)

    def fail(self, group: list[Pending], exc: Exception) -> None:
        kind = "oom" if isinstance(exc, ModelOutOfMemoryError) else "model"
        message = f"{kind}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
        for pending in group:
            pending.conn.respond(pending.request_id, None, {"server": self.server_id}, message)

    # Lifetime --------------------------------------------------------------------------------------------

    def watch(self) -> str:
        """Block until the executor is gone or the server has been idle too long; says which."""
        spec = self.spec
        while True:
            time.sleep(1.0)
            if process_start(spec.executor_pid) != spec.executor_started:
                return f"executor process {spec.executor_pid} is gone"
            if time.monotonic() - self.last_request > self.settings.idle_timeout_s and self.requests.empty():
                return f"idle for {self.settings.idle_timeout_s:g} s"


def _slice(output: Any, start: int, stop: int) -> Any:
    if isinstance(output, np.ndarray):
        return output[start:stop]
    if isinstance(output, dict):
        return {k: np.asarray(v)[start:stop] for k, v in output.items()}
    return [np.asarray(v)[start:stop] for v in output]


def serve(spec: ServerSpec) -> int:
    from batchscore.udfs.scorer import cached_predictor
    from batchscore.udfs.worker_memory import keep_heap_resident, use_arrow_pool

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(spec.address)
    except OSError as exc:  # another server of this model and device got there first
        log.info("not serving %s on %s: %s", spec.ref.load_uri, spec.device, exc)
        return 0
    listener.listen(256)
    keep_heap_resident()
    use_arrow_pool()
    assert spec.plan.sharing is not None
    if spec.device == "cpu":
        import torch

        threads = spec.plan.sharing.threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
    try:
        predictor = cached_predictor(spec.ref, spec.plan, spec.device)
    except Exception as exc:  # every client that connects is told why, then the server exits
        message = " ".join(str(exc).split())[:2000]
        log.error("%s", message)
        _refuse_clients(listener, message, spec)
        return 1
    server = ModelServer(spec, predictor, listener)
    log.info("serving %s on %s (pid %d)", spec.ref.load_uri, spec.device, os.getpid())
    threading.Thread(target=server.accept_forever, daemon=True).start()
    threading.Thread(target=server.compute_forever, daemon=True).start()
    reason = server.watch()
    log.info("stopping: %s", reason)
    server.stopping.set()
    listener.close()
    return 0


def _refuse_clients(listener: socket.socket, message: str, spec: ServerSpec) -> None:
    """For a few seconds, answer every connection with the load error, so that waiting tasks report it."""
    listener.settimeout(0.5)
    until = time.monotonic() + 5.0
    while time.monotonic() < until:
        try:
            sock, _ = listener.accept()
        except OSError:
            continue
        try:
            send_frame(sock, encode_hello({"error": message, "model": spec.ref.load_uri}))
        finally:
            sock.close()
    listener.close()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with open(argv[0], "rb") as handle:
        spec: ServerSpec = pickle.load(handle)  # written by this executor's own worker
    return serve(spec)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
