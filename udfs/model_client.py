"""The tasks' side of ``model.sharing: executor``: find or start the executor's model server, send it rows.

The first task on an executor that needs a (model version, device) takes a file lock in the executor's
local directory (``SPARK_LOCAL_DIRS``), finds no server answering on that pair's socket, and starts one
(:mod:`udfs.model_server`) in a session of its own; every other task, and every later job of the session,
connects to it. No RDD, barrier stage or driver-side setup is involved, so it works from a Spark Connect
client too. A worker keeps its connection for its life.

Faults: a server that closes the connection (it crashed, was killed, or exited idle) is found or started
again once for the same request, which is then sent again (a pure function of its rows, so nothing is
scored twice in the output); a server that does not answer within ``request_timeout_s`` is killed as hung
and the task fails naming the model and device, so that its retry starts a fresh one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.udfs.arrow_tensor import ModelOutput, features_to_numpy
from batchscore.udfs.model_server import ServerSpec, process_start
from batchscore.udfs.model_wire import (
    PROTOCOL,
    ServerGoneError,
    SharedMemory,
    decode_hello,
    decode_response,
    encode_request,
    recv_frame,
    send_frame,
)
from batchscore.udfs.predictors import valid_features
from batchscore.udfs.runtime import ModelOutOfMemoryError, ModelServerError
from batchscore.udfs.spec import ModelRef, ScoringPlan
from batchscore.udfs.stats import record_request
from batchscore.udfs.validation import ERROR_MARKER, worker_error

log = logging.getLogger(__name__)


def executor_process() -> tuple[int, str]:
    """The executor's JVM (the nearest ``java`` ancestor of this worker) as ``(pid, start time)``; this
    worker's parent when there is none (a worker started outside Spark)."""
    pid = os.getpid()
    for _ in range(16):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{parent}/comm") as comm:
                name = comm.read().strip()
        except (OSError, ValueError, IndexError):
            break
        if name == "java":
            return parent, process_start(parent)
        if parent <= 1:
            break
        pid = parent
    return os.getppid(), process_start(os.getppid())


def local_dir() -> Path:
    """The executor's first local directory (Spark sets ``SPARK_LOCAL_DIRS`` for its Python workers)."""
    dirs = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return Path(dirs[0]) if dirs else Path(tempfile.gettempdir())


class ServerClient:
    """This worker's connection to the server of one (model version, device) on its executor."""

    def __init__(self, ref: ModelRef, plan: ScoringPlan, device: str) -> None:
        assert plan.sharing is not None
        self.ref, self.plan, self.device, self.settings = ref, plan, device, plan.sharing
        self.executor_pid, self.executor_started = executor_process()
        identity = (
            socket.gethostname(),
            self.executor_pid,
            self.executor_started,
            ref.load_uri,
            device,
            plan.row_shape,
            plan.autocast,
            plan.cpu_kernels,
            plan.sharing,
            PROTOCOL,  # a server of another wire protocol (an older release still running) is not ours
        )
        self.key = hashlib.sha256(repr(identity).encode()).hexdigest()[:20]
        base = local_dir() / f"batchscore-model-{self.key}"
        self.lock_path, self.spec_path, self.log_path = (
            base.with_suffix(suffix) for suffix in (".lock", ".spec", ".log")
        )
        self.address = (
            f"\0batchscore-model-{self.key}"
            if sys.platform.startswith("linux")
            else str(Path(tempfile.gettempdir()) / f"bsm-{self.key}.sock")
        )
        self.sock: socket.socket | None = None
        self.min_bytes = self.settings.shared_memory_min_bytes if SharedMemory.available() else None
        # This connection's shared memory: ours for requests, the server's (mapped) for responses.
        self.outbound: SharedMemory | None = None
        self.inbound: SharedMemory | None = None
        self.hello: dict[str, Any] = {}
        self.next_id = 0
        self.lock = threading.Lock()

    def describe(self) -> str:
        return f"the model server for {self.ref.load_uri} on {self.device} (executor pid {self.executor_pid})"

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError:
            sock.close()
            return None
        return sock

    def _start(self) -> subprocess.Popen[bytes]:
        spec = ServerSpec(
            self.ref, self.plan, self.device, self.address, self.executor_pid, self.executor_started
        )
        partial = self.spec_path.with_suffix(f".spec.{os.getpid()}")
        partial.write_bytes(pickle.dumps(spec))
        partial.replace(self.spec_path)
        # The worker's own import path: py-files and Spark Connect artifacts are on it, not in the env.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        command = [sys.executable, "-m", "batchscore.udfs.model_server", str(self.spec_path)]
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # not in the worker's process group: it outlives the worker
            )

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return f"; its log {self.log_path} ends: {lines[-1][:500]}" if lines else ""

    def _server_socket(self, deadline: float) -> socket.socket:
        """A connection to the running server, started here under the executor's lock if none answers."""
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = self._connect()
            if sock is not None:
                return sock
            process = self._start()
            log.info("started %s (pid %d)", self.describe(), process.pid)
            restarted = False
            while time.monotonic() < deadline:
                sock = self._connect()
                if sock is not None:
                    return sock
                if process.poll() is not None:
                    if process.returncode < 0 and not restarted:
                        # Killed by a signal while loading (an operator, a memory killer): once more.
                        log.warning(
                            "%s was killed by signal %d as it started; starting it again",
                            self.describe(), -process.returncode,
                        )  # fmt: skip
                        process, restarted = self._start(), True
                        continue
                    raise ModelServerError(
                        worker_error(
                            "model_server",
                            f"{self.describe()} exited with code {process.returncode} as it started"
                            + (", twice" if restarted else "")
                            + self._log_tail(),
                        )
                    )
                time.sleep(0.05)
        raise ModelServerError(
            worker_error(
                "model_server", f"{self.describe()} did not start listening in time{self._log_tail()}"
            )
        )

    def ensure(self) -> socket.socket:
        """The connection, opened (and the server started) when there is none; waits for the model load."""
        if self.sock is not None:
            return self.sock
        deadline = time.monotonic() + self.settings.start_timeout_s
        sock = self._server_socket(deadline)
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            hello = decode_hello(recv_frame(sock))
        except (TimeoutError, ServerGoneError, OSError) as exc:
            sock.close()
            raise ModelServerError(
                worker_error(
                    "model_server",
                    f"{self.describe()} did not answer within model.server.start_timeout_s="
                    f"{self.settings.start_timeout_s:g} ({type(exc).__name__}){self._log_tail()}",
                )
            ) from None
        if "error" in hello:
            sock.close()
            cause = re.sub(rf"^{ERROR_MARKER}\[\w+\]: ", "", str(hello["error"]))  # the server's own
            raise ModelServerError(worker_error("model_load", f"{self.describe()}: {cause}"))
        sock.settimeout(self.settings.request_timeout_s)
        self.sock, self.hello = sock, hello
        self.outbound, self.inbound = SharedMemory(), SharedMemory()
        return sock

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock, self.outbound, self.inbound = None, None, None

    def _kill_hung_server(self) -> None:
        server = str(self.hello.get("server", ""))
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(server.rsplit(":", 1)[1]), signal.SIGKILL)

    def request(self, features: np.ndarray[Any, Any]) -> tuple[ModelOutput, dict[str, Any]]:
        """The model's outputs for ``features`` and the request's timings."""
        with self.lock:
            for attempt in (1, 2):
                sock = self.ensure()
                self.next_id += 1
                try:
                    payload, fd = encode_request(
                        self.next_id, features, shared=self.outbound, min_bytes=self.min_bytes
                    )
                    send_frame(sock, payload, fd)
                    frame = recv_frame(sock, self.inbound)
                except TimeoutError:
                    self._kill_hung_server()
                    self.close()
                    raise ModelServerError(
                        worker_error(
                            "model_server",
                            f"{self.describe()} did not answer within model.server.request_timeout_s="
                            f"{self.settings.request_timeout_s:g}; killed as hung (a retry starts a "
                            "fresh one)",
                        )
                    ) from None
                except (ServerGoneError, OSError) as exc:
                    self.close()
                    if attempt == 1:
                        log.warning("%s closed the connection (%s); connecting again", self.describe(), exc)
                        continue
                    raise ModelServerError(
                        worker_error(
                            "model_server",
                            f"{self.describe()} closed the connection twice ({exc}){self._log_tail()}",
                        )
                    ) from None
                _, output, info, error = decode_response(frame, self.inbound)
                if output is None:
                    kind, _, message = error.partition(": ")
                    if kind == "oom":
                        raise ModelOutOfMemoryError(f"{self.describe()}: {message}")
                    raise RuntimeError(message)  # the model raised: the scoring loop isolates the rows
                return output, info
        raise AssertionError("unreachable")


_clients: dict[tuple[str, str, ScoringPlan], ServerClient] = {}
_clients_lock = threading.Lock()


def server_client(ref: ModelRef, plan: ScoringPlan, device: str) -> ServerClient:
    """This worker's client of the server for ``ref`` on ``device`` (one per worker, kept across tasks)."""
    key = (ref.load_uri, device, plan)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = ServerClient(ref, plan, device)
        return _clients[key]


class RemotePredictor:
    """A :class:`udfs.predictors.Predictor` whose model lives in the executor's server: ``decode`` makes
    the float32 rows on the task's side (no torch here), ``compute`` sends them and records the request."""

    def __init__(self, client: ServerClient, plan: ScoringPlan, stats: dict[str, Any]) -> None:
        self.client = client
        self.plan = plan
        self.stats = stats
        self.device = client.device

    def decode(self, batch: pa.RecordBatch) -> Any:
        return features_to_numpy(batch, self.plan.feature_columns, self.plan.row_shape, row_major=True)

    def decode_if_valid(self, batch: pa.RecordBatch) -> Any | None:
        return valid_features(batch, self.plan.feature_columns, self.plan.row_shape, row_major=True)

    def compute(self, inputs: Any, start: int, stop: int) -> ModelOutput:
        output, info = self.client.request(inputs[start:stop])
        record_request(self.stats, stop - start, info, self.device, self.client.executor_pid)
        return output

    def release_memory(self) -> None:
        """The server frees its own memory."""
