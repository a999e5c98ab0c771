"""GPU check of ``model.sharing``: four task loops on one GPU, one shared server vs four resident copies.

Without Spark (the device machine has none): four processes play four concurrent tasks of one executor,
each scoring its own Arrow batches of ``--call-rows`` rows (a 2-D ``array<float>`` column, as Spark sends
one) through ``udfs.runtime.ScoringLoop``, exactly as a Spark task does:

- ``worker``: each process loads the model onto the GPU through the worker's own cache and device code
  (``udfs.scorer.cached_predictor``): four copies, each computing its own small calls;
- ``executor``: each process is a client of one model server (``udfs.model_client``), which the first one
  starts; the server loads the model once and batches the four tasks' calls together, up to
  ``--max-batch-size`` rows.

Model: a transformer encoder over 32 tokens of 64 features (random weights, built in code, saved as an
MLflow pytorch model in a temporary folder and loaded from there by both modes). Prints one table: model
copies (loads, and processes holding memory on the GPU where NVML can see them), GPU memory used, rows/s,
request p99, and raw torch at the server's batch size on the same GPU and precision. Targets: one copy in
``executor`` mode, its rows/s >= ``worker`` mode and >= 90% of raw torch at the server's batch size.

Runs on CPU too (``--quick``: a small model, to check the script itself). On the device machine, which has
torch, pyarrow and psutil but no mlflow, carry mlflow-skinny and the packages it needs as wheels
(docs/performance.md, "GPU checks", lists them).

    python3 bench/gpu_sharing.py [--quick] [--tasks 4] [--rows 65536] [--call-rows 32]
                                 [--max-batch-size 512] [--autocast bf16] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa

TOKENS, WIDTH = 32, 64


def build_encoder(d_model: int, layers: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        d_model=d_model, nhead=8, dim_feedforward=4 * d_model, batch_first=True
    )
    return nn.Sequential(
        nn.Linear(WIDTH, d_model),
        nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False),
        nn.Flatten(),
        nn.Linear(TOKENS * d_model, 1),
        nn.Sigmoid(),
    ).eval()


def save_model(folder: Path, d_model: int, layers: int) -> Any:
    """The encoder as an MLflow pytorch model in ``folder``; returns the pinned ``ModelRef`` of it."""
    import mlflow.pytorch

    from batchscore.udfs.spec import ModelRef

    path = folder / "model"
    mlflow.pytorch.save_model(build_encoder(d_model, layers), str(path), serialization_format="pickle")
    store = (folder / "mlruns").as_uri()
    return ModelRef(
        requested_uri=str(path), load_uri=str(path), name="gpu_sharing", version="1", run_id=None,
        artifact_uri=str(path), flavor="pytorch", tracking_uri=store, registry_uri=store,
    )  # fmt: skip


def plan_for(args: Any, sharing: str) -> Any:
    from batchscore.udfs.spec import OutputField, ScoringPlan, Sharing

    return ScoringPlan(
        feature_columns=("x",),
        passthrough_columns=("id",),
        outputs=(OutputField("score", "float32"),),
        batch_size=args.call_rows,
        row_shape=(TOKENS, WIDTH),
        autocast=args.autocast,
        device=args.device,
        sharing=(
            Sharing(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.delay_ms, idle_timeout_s=60)
            if sharing == "executor"
            else None
        ),
    )


def task_batches(task: int, rows: int, call_rows: int) -> list[pa.RecordBatch]:
    """A task's input as Spark sends an ``array<float>`` column: one list of TOKENS x WIDTH per row."""
    per_row = TOKENS * WIDTH
    values = np.random.default_rng(task).standard_normal(rows * per_row, dtype=np.float32)
    batches = []
    for start in range(0, rows, call_rows):
        n = min(call_rows, rows - start)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_row)
        x = pa.ListArray.from_arrays(offsets, pa.array(values[start * per_row : (start + n) * per_row]))
        ids = pa.array(np.arange(start, start + n, dtype=np.int64) + task * rows)
        batches.append(pa.RecordBatch.from_arrays([ids, x], names=["id", "x"]))
    return batches


def task(index: int, ref: Any, plan: Any, args: Any, sync: tuple[Any, Any]) -> None:
    """One concurrent task: warm up (load or connect), wait for the others, score, report."""
    barrier, results = sync
    from batchscore.udfs import model_cache
    from batchscore.udfs.runtime import ScoringLoop
    from batchscore.udfs.stats import empty_stats, summary_metrics

    stats = empty_stats()
    if plan.sharing is None:
        from batchscore.udfs.scorer import cached_predictor

        predictor: Any = cached_predictor(ref, plan, args.device)
    else:
        from batchscore.udfs.model_client import RemotePredictor, server_client

        predictor = RemotePredictor(server_client(ref, plan, args.device), plan, stats)
    batches = task_batches(index, args.rows // args.tasks, args.call_rows)
    list(ScoringLoop(predictor, plan, empty_stats()).run(iter(batches[:4])))  # warm: load, connect
    if plan.sharing is not None:
        predictor.stats = stats = empty_stats()
    barrier.wait()
    started = time.perf_counter()
    scored = sum(b.num_rows for b in ScoringLoop(predictor, plan, stats).run(iter(batches)))
    done = time.perf_counter()
    allocated = 0
    if args.device.startswith("cuda") and plan.sharing is None:
        import torch

        allocated = torch.cuda.memory_allocated(args.device)
    results.put(
        {
            "task": index,
            "pid": os.getpid(),
            "rows": scored,
            "started": started,
            "done": done,
            "loads": model_cache.load_count(),
            "allocated_bytes": allocated,
            "metrics": summary_metrics(stats),
            "servers": stats.get("servers", {}),
        }
    )


class GpuMemory:
    """Samples the GPU's used memory and the processes holding some (NVML; empty where it cannot see)."""

    def __init__(self, device: str) -> None:
        self.peak_used, self.holders, self.baseline = 0, set(), 0
        self.stop = threading.Event()
        self.handle = None
        if device.startswith("cuda"):
            try:
                import pynvml

                pynvml.nvmlInit()
                index = int(device.split(":")[1]) if ":" in device else 0
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.baseline = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
            except Exception as exc:  # reported as unknown, not guessed
                print(f"NVML unavailable: {exc}")

    def sample(self) -> None:
        import pynvml

        self.peak_used = max(self.peak_used, pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
            if (proc.usedGpuMemory or 0) > 0:
                self.holders.add(proc.pid)

    def run(self) -> None:
        while self.handle is not None and not self.stop.is_set():
            self.sample()
            time.sleep(0.2)

    def facts(self) -> dict[str, Any]:
        if self.handle is None:
            return {"gpu_mib_used": None, "gpu_processes": None}
        return {
            "gpu_mib_used": (self.peak_used - self.baseline) / 2**20,
            "gpu_processes": len(self.holders),
        }


def run_mode(ref: Any, args: Any, sharing: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(args.tasks + 1), ctx.Queue()
    plan = plan_for(args, sharing)
    procs = [
        ctx.Process(target=task, args=(i, ref, plan, args, (barrier, results))) for i in range(args.tasks)
    ]
    for proc in procs:
        proc.start()
    memory = GpuMemory(args.device)
    barrier.wait(timeout=600)  # every task has loaded (or connected) and scored its warm-up batches
    sampler = threading.Thread(target=memory.run, daemon=True)
    sampler.start()
    reports = [results.get(timeout=600) for _ in procs]
    memory.stop.set()
    sampler.join()
    for proc in procs:
        proc.join(timeout=60)
    rows = sum(r["rows"] for r in reports)
    seconds = max(r["done"] for r in reports) - min(r["started"] for r in reports)
    servers = {k: v for r in reports for k, v in r["servers"].items()}
    if sharing == "executor":
        loads = sum(v["loads"] for v in servers.values())
    else:
        loads = sum(r["loads"] for r in reports)

    def worst(key: str) -> float | None:
        found = [r["metrics"][key] for r in reports if key in r["metrics"]]
        return max(found) if found else None

    return {
        "mode": sharing,
        "rows": rows,
        "rows_per_s": rows / seconds,
        "model_loads": loads,
        "allocated_mib_in_tasks": sum(r["allocated_bytes"] for r in reports) / 2**20,
        "task_batch_p99_ms": worst("batch_latency_p99_ms"),
        "request_queue_p99_ms": worst("request_queue_p99_ms"),
        "request_compute_p99_ms": worst("request_compute_p99_ms"),
        "rows_per_model_batch": statistics.mean(
            r["metrics"].get("server_rows_per_model_batch", args.call_rows) for r in reports
        ),
        **memory.facts(),
    }


def stop_servers() -> None:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if "batchscore.udfs.model_server" in (proc.info["cmdline"] or []):
            proc.kill()


def raw_torch(ref: Any, args: Any) -> float:
    """Rows/s of a plain loop at the server's batch size: host tensor slice -> device -> model -> host."""
    import mlflow.pytorch
    import torch

    model = mlflow.pytorch.load_model(ref.load_uri, map_location=args.device).eval()
    host = torch.from_numpy(
        np.random.default_rng(9).standard_normal((args.rows, TOKENS, WIDTH), dtype=np.float32)
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast or "")
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"

    def once() -> float:
        if device_type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            for start in range(0, len(host), args.max_batch_size):
                model(host[start : start + args.max_batch_size].to(args.device)).float().cpu()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return len(host) / (time.perf_counter() - started)

    once()
    return max(once() for _ in range(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model: checks the script on CPU")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--rows", type=int, default=65536, help="rows in all, split over the tasks")
    parser.add_argument("--call-rows", type=int, default=32, help="rows per model call in a task")
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--delay-ms", type=float, default=2.0)
    parser.add_argument("--autocast", choices=["bf16", "fp16", "none"], default="bf16")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds of the two modes")
    parser.add_argument("--json", default=os.environ.get("OUT", "bench/results") + "/gpu_sharing.json")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    args.device = "cuda:0" if cuda else "cpu"
    args.autocast = None if args.autocast == "none" or not cuda else args.autocast
    if args.quick:
        args.rows = min(args.rows, 2048)
    d_model, layers = (64, 1) if args.quick else (512, 6)
    os.environ.setdefault("SPARK_LOCAL_DIRS", tempfile.mkdtemp(prefix="gpu_sharing_"))
    machine = {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(f"# gpu_sharing: {machine} {vars(args)} d_model={d_model} layers={layers}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        ref = save_model(Path(folder), d_model, layers)
        rounds = []
        for index in range(args.rounds):
            order = ("worker", "executor") if index % 2 == 0 else ("executor", "worker")
            measured = {mode: run_mode(ref, args, mode) for mode in order}
            rounds.append(measured)
            print(
                f"round {index + 1}: worker {measured['worker']['rows_per_s']:,.0f} rows/s, executor "
                f"{measured['executor']['rows_per_s']:,.0f} rows/s",
                flush=True,
            )
        stop_servers()
        time.sleep(1.0)
        raw = raw_torch(ref, args)
    ratios = [r["executor"]["rows_per_s"] / r["worker"]["rows_per_s"] for r in rounds]
    last = rounds[-1]
    print(
        f"\n| model.sharing ({args.tasks} tasks, {args.call_rows}-row calls) | model loads | GPU processes "
        "| GPU MiB used | rows/s (median) | task batch p99 ms | rows per model batch |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode in ("worker", "executor"):
        facts = last[mode]
        rate = statistics.median(r[mode]["rows_per_s"] for r in rounds)
        mib = "n/a" if facts["gpu_mib_used"] is None else f"{facts['gpu_mib_used']:,.0f}"
        print(
            f"| {mode} | {facts['model_loads']} | {facts['gpu_processes']} | {mib} | {rate:,.0f} "
            f"| {facts['task_batch_p99_ms']:.1f} | {facts['rows_per_model_batch']:,.0f} |"
        )
    executor_rate = statistics.median(r["executor"]["rows_per_s"] for r in rounds)
    print(f"| raw torch at {args.max_batch_size} rows | 1 | | | {raw:,.0f} | | {args.max_batch_size} |")
    print(
        f"\nexecutor / worker, median of {args.rounds} paired rounds: {statistics.median(ratios):.2f}x; "
        f"executor / raw torch: {executor_rate / raw:.0%}"
    )
    report = {"machine": machine, "params": vars(args), "rounds": rounds, "raw_torch_rows_per_s": raw}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    ok = all(r["executor"]["model_loads"] == 1 for r in rounds)
    if cuda:
        ok = ok and statistics.median(ratios) >= 1.0 and executor_rate >= 0.9 * raw
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
