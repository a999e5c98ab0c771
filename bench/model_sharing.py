"""Benchmark: ``model.sharing: worker`` vs ``executor`` where batching across tasks matters.

Many concurrent tasks with small model calls into a model whose throughput grows with its batch, over a
Delta input of many small files, ``model.batch_size`` 64, on ``local[8]`` (eight task slots on this
machine's cores, as an executor whose tasks wait on I/O or a GPU has more slots than cores). Models:
``encoder``, a small transformer encoder (64 features as 8 tokens of 8, two encoder layers of width 64);
``wide_mlp``, MLP 64-2048-2048-1, whose small calls are bound by reading its weights. In ``worker`` mode
each of the eight Python workers holds its own copy and computes its own calls, one torch thread each; in
``executor`` mode one server computes the calls of all eight tasks together, in model batches of up to
``--max-batch-size`` rows. Both modes run the same job into a noop sink in interleaved rounds; each
round's ratio (executor over worker) is kept and their median reported. Prints rows/s, model call p99 (in
the tasks: the model's own call in worker mode, the request's round trip to the server in executor mode),
batch latency p99 (per Arrow batch, in the tasks), the server's request queue wait and compute p99 and
mean rows per model batch; writes bench/results/model_sharing_MODEL.json.

    python bench/model_sharing.py [--model encoder|wide_mlp] [--rows 200000] [--files 64] [--rounds 5]
                                  [--batch-size 64] [--max-batch-size 1024] [--delay-ms 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import bench as tabular  # noqa: E402  (bench/bench.py: input, registration, machine facts)

MODEL = "bench_encoder"
TOKENS, WIDTH = 8, 8  # 64 features


def build_encoder() -> Any:
    """nn.Sequential of torch's own modules only, so that loading it needs no code of ours."""
    import torch
    from torch import nn

    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True)
    return nn.Sequential(
        nn.Unflatten(1, (TOKENS, WIDTH)),
        nn.Linear(WIDTH, 64),
        nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False),
        nn.Flatten(),
        nn.Linear(TOKENS * 64, 1),
        nn.Sigmoid(),
    ).eval()


def build_wide_mlp() -> Any:
    """MLP 64-2048-2048-1 (4.3 M parameters, 17 MB): a call of a few rows reads every weight from memory
    for little arithmetic, so its throughput grows with the batch on a CPU too."""
    return tabular.mlp((TOKENS * WIDTH, 2048, 2048, 1), seed=4)


MODELS = {"encoder": (MODEL, build_encoder), "wide_mlp": ("bench_wide_mlp", build_wide_mlp)}


def ensure_model(tracking_uri: str, model: str) -> str:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    names = tabular.features(TOKENS * WIDTH)
    signature = ModelSignature(
        Schema([ColSpec("double", f) for f in names]), Schema([ColSpec("double", "score")])
    )
    name, build = MODELS[model]
    return tabular.register_once(tracking_uri, name, build, signature)


def job_config(
    model_uri: str,
    input_path: str,
    sharing: str,
    batch_size: int,
    max_batch: int,
    *,
    delay_ms: float,
    threads: int = 0,
) -> Any:
    from batchscore.jobs.config import ScoringJobConfig
    from batchscore.jobs.home import batchscore_home

    return ScoringJobConfig.model_validate(
        {
            "name": f"sharing_{sharing}",
            "model": {
                "uri": model_uri,
                "batch_size": batch_size,
                "prediction_column": "score",
                "sharing": sharing,
                "server": {"max_batch_size": max_batch, "max_queue_delay_ms": delay_ms, "threads": threads},
            },
            "input": {"path": input_path},
            "output": {
                "path": str(batchscore_home() / "bench" / f"out_sharing_{sharing}"),
                "key_columns": ["key"],
            },
            "mlflow": {"experiment": "batchscore-bench", "log_run": False},
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="encoder")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slots", type=int, default=8, help="task slots (local[N])")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per model call in a task")
    parser.add_argument("--max-batch-size", type=int, default=1024, help="the server's model batch")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="the server's max_queue_delay_ms")
    parser.add_argument("--server-threads", type=int, default=0, help="model.server.threads (0: all cores)")
    parser.add_argument("--json", default=None, help="default: bench/results/model_sharing_MODEL.json")
    args = parser.parse_args()
    args.json = args.json or str(ROOT / "bench" / "results" / f"model_sharing_{args.model}.json")

    os.environ.setdefault("BATCHSCORE_HOME", str(ROOT / ".batchscore"))
    from batchscore.jobs.home import batchscore_home, default_tracking_uri
    from batchscore.jobs.runner import configure_logging
    from batchscore.jobs.session import get_or_create_session

    configure_logging("WARNING")
    home = batchscore_home()
    tracking = default_tracking_uri(home)
    spark, _ = get_or_create_session(
        "local", {"spark.master": f"local[{args.slots}]", "spark.ui.enabled": "false"}
    )
    input_path = str(home / "bench" / f"sharing_input_{args.rows}_{args.files}")
    tabular.ensure_input(spark, input_path, args.rows, args.files, TOKENS * WIDTH)
    model_uri = ensure_model(tracking, args.model)
    runners = {
        mode: tabular.ours_job(
            spark,
            job_config(
                model_uri,
                input_path,
                mode,
                args.batch_size,
                args.max_batch_size,
                delay_ms=args.delay_ms,
                threads=args.server_threads,
            ),
            model_uri,
            tracking,
        )
        for mode in ("worker", "executor")
    }
    for runner in runners.values():
        runner()  # untimed: starts the workers (and the server) and loads the model
    rounds: list[dict[str, Any]] = []
    for index in range(args.rounds):
        order = ["worker", "executor"] if index % 2 == 0 else ["executor", "worker"]
        measured: dict[str, Any] = {}
        for mode in order:
            started = time.perf_counter()
            metrics = runners[mode]()
            measured[mode] = {"seconds": time.perf_counter() - started, "metrics": metrics}
        ratio = measured["worker"]["seconds"] / measured["executor"]["seconds"]
        rounds.append({**measured, "ratio": ratio})
        print(
            f"round {index + 1}: worker {args.rows / measured['worker']['seconds']:,.0f} rows/s, executor "
            f"{args.rows / measured['executor']['seconds']:,.0f} rows/s ({ratio:.2f}x)",
            flush=True,
        )
    spark.stop()

    def median(mode: str, key: str) -> float:
        return float(statistics.median(r[mode]["metrics"].get(key, 0.0) for r in rounds))

    median_ratio = statistics.median(r["ratio"] for r in rounds)
    print(
        f"\n| {args.model}: model.sharing ({args.slots} tasks, {args.batch_size}-row calls) "
        "| rows/s (median) | model call p99 ms | batch latency p99 ms | request queue p99 ms "
        "| request compute p99 ms | rows per model batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in ("worker", "executor"):
        rate = statistics.median(args.rows / r[mode]["seconds"] for r in rounds)
        per_batch = median(mode, "server_rows_per_model_batch") if mode == "executor" else args.batch_size
        queue = f"{median(mode, 'request_queue_p99_ms'):.1f}" if mode == "executor" else "-"
        compute = f"{median(mode, 'request_compute_p99_ms'):.1f}" if mode == "executor" else "-"
        print(
            f"| {mode} | {rate:,.0f} | {median(mode, 'model_call_p99_ms'):.1f} "
            f"| {median(mode, 'batch_latency_p99_ms'):.1f} | {queue} | {compute} | {per_batch:,.0f} |"
        )
    print(f"\nexecutor / worker, median of {args.rounds} paired rounds: {median_ratio:.2f}x")
    report = {
        "params": vars(args),
        "rounds": rounds,
        "median_ratio": median_ratio,
        "machine": {"cpus": os.cpu_count(), **tabular.cpu_model()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
