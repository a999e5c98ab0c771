"""Benchmark: the model server's transport, the socket alone vs shared memory, by request size.

One real model server (``udfs.model_server``, started by a ``udfs.model_client.ServerClient`` as a task
would) serving a model that costs next to nothing, so that a request's round trip is the transport:
client encode and send, server receive, decode and batch, response encode and send, client decode.
Two models: ``scalar``, one float32 per row back (a score), and ``echo``, the row itself back (an
embedding as wide as its input). Rows of 64 float32 (256 bytes). For each request size, rounds of
``--requests`` back-to-back requests alternate between a client whose frames all go over the socket
(``shared_memory_min_bytes: null``) and one whose frames all go through shared memory (``0``); each
pair's ratio is kept and the median reported, with the median round trip and GB/s of features sent.
Writes bench/results/model_transport.json.

    python bench/model_transport.py [--rows 64,1024,4096,16384,131072] [--requests 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDTH = 64


def build(kind: str) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "echo":
        return nn.Sequential(nn.Identity()).eval()
    return nn.Sequential(nn.Linear(WIDTH, 1)).eval()


def save(folder: Path, kind: str) -> Any:
    import mlflow.pytorch

    from batchscore.udfs.spec import ModelRef

    path = folder / kind
    mlflow.pytorch.save_model(build(kind), str(path), serialization_format="pickle")
    store = (folder / "mlruns").as_uri()
    return ModelRef(
        requested_uri=str(path), load_uri=str(path), name=f"transport_{kind}", version="1", run_id=None,
        artifact_uri=str(path), flavor="pytorch", tracking_uri=store, registry_uri=store,
    )  # fmt: skip


def client(ref: Any, kind: str, max_rows: int, min_bytes: int | None) -> Any:
    from batchscore.udfs.model_client import ServerClient
    from batchscore.udfs.spec import OutputField, ScoringPlan, Sharing

    plan = ScoringPlan(
        feature_columns=tuple(f"f{i}" for i in range(WIDTH)),
        passthrough_columns=(),
        outputs=(OutputField("score", "float32", "vector" if kind == "echo" else "scalar"),),
        batch_size=max_rows,
        device="cpu",
        sharing=Sharing(
            max_batch_size=max_rows, max_queue_delay_ms=0.0, idle_timeout_s=120, threads=1,
            shared_memory_min_bytes=min_bytes,
        ),
    )  # fmt: skip
    return ServerClient(ref, plan, "cpu")


def round_trip_ms(conn: Any, features: np.ndarray[Any, Any], requests: int) -> float:
    """Median milliseconds of one request, over ``requests`` back-to-back ones."""
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        conn.request(features)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64,1024,4096,16384,131072", help="rows per request, by commas")
    parser.add_argument("--requests", type=int, default=20, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "model_transport.json"))
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    os.environ.setdefault("SPARK_LOCAL_DIRS", tempfile.mkdtemp(prefix="model_transport_"))
    from batchscore.udfs.model_wire import SharedMemory

    if not SharedMemory.available():
        print("this platform has no memfd: every frame goes over the socket")
        return 1
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("scalar", "echo"):
            ref = save(Path(folder), kind)
            socket_only = client(ref, kind, max(sizes), None)
            shared = client(ref, kind, max(sizes), 0)
            for rows in sizes:
                features = np.random.default_rng(rows).standard_normal((rows, WIDTH), dtype=np.float32)
                for conn in (socket_only, shared):  # untimed: connect, map, fault the pages in
                    out, _ = conn.request(features)
                    expected = features if kind == "echo" else out
                    assert np.array_equal(np.asarray(out).reshape(expected.shape), expected)
                pairs = []
                for index in range(args.rounds):
                    order = ((socket_only, "socket"), (shared, "shared"))
                    measured = {
                        name: round_trip_ms(conn, features, args.requests)
                        for conn, name in (order if index % 2 == 0 else order[::-1])
                    }
                    pairs.append(measured)
                row = {
                    "model": kind,
                    "rows": rows,
                    "request_bytes": features.nbytes,
                    "socket_ms": statistics.median(p["socket"] for p in pairs),
                    "shared_ms": statistics.median(p["shared"] for p in pairs),
                    "speedup": statistics.median(p["socket"] / p["shared"] for p in pairs),
                    "pairs": pairs,
                }
                results.append(row)
                print(
                    f"{kind:6} {rows:>7,} rows ({features.nbytes / 2**20:8.3f} MiB): socket "
                    f"{row['socket_ms']:8.2f} ms, shared {row['shared_ms']:8.2f} ms, "
                    f"{row['speedup']:.2f}x",
                    flush=True,
                )
            for conn in (socket_only, shared):
                conn._kill_hung_server()  # its server, so that the next model's starts fresh
                conn.close()
    print("\n| model | rows per request | MiB | socket ms | shared memory ms | socket / shared (median) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['rows']:,} | {r['request_bytes'] / 2**20:.3f} | {r['socket_ms']:.2f} "
            f"| {r['shared_ms']:.2f} | {r['speedup']:.2f}x |"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    report = {"params": vars(args), "results": results, "cpus": os.cpu_count()}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
