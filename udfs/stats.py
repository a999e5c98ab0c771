"""Per-task scoring statistics: kept by each task, sent with its rows as JSON, merged on the driver.

Each task's stats travel on one row of its last output batch (:func:`udfs.scorer.with_task_stats`); the
driver collects them with an observed metric of the scoring query, which counts a retried task once and
works on a classic session and over Spark Connect alike. Batch latencies go into a fixed log-spaced histogram
(about 6% wide buckets), so a job of a billion rows sends a few hundred counters per task, and P50/P99 are
read off it on the driver.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterable
from typing import Any

# Bucket upper bounds in milliseconds: 10 ** (k / 40) for k = -120 .. 240 (1 µs to 1,000 s).
_LOW_EXP, _HIGH_EXP, _STEPS = -120, 240, 40
N_BUCKETS = _HIGH_EXP - _LOW_EXP + 1
STAGES = ("decode", "compute", "encode")
# Latency histograms: per Arrow batch in a task; per model call in a task (in executor mode, a request's
# round trip); per request to an executor's model server, split into the time it queued for its model
# batch and that batch's compute.
HISTOGRAMS = ("latency_hist", "call_hist", "queue_hist", "server_compute_hist")


def bucket_of(ms: float) -> int:
    if ms <= 0:
        return 0
    k = math.ceil(math.log10(ms) * _STEPS)
    return min(max(k - _LOW_EXP, 0), N_BUCKETS - 1)


def bucket_upper_ms(index: int) -> float:
    return float(10 ** ((index + _LOW_EXP) / _STEPS))


def worker_id() -> str:
    """This Python worker process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def empty_stats() -> dict[str, Any]:
    return {
        "rows": 0,
        "batches": 0,  # model calls
        "arrow_batches": 0,  # Arrow batches, each a whole number of model calls
        "tasks": 0,
        "oom_backoffs": 0,
        "invalid_rows": 0,
        "task_s": 0.0,  # wall time of the tasks that scored, first batch to last (per-row cost in workers)
        # Epoch seconds of the job's first scored batch and its last (0: none): the scoring window, apart
        # from the job's fixed costs (session, snapshot, worker start, model load, commit).
        "first_at": 0.0,
        "last_at": 0.0,
        "load_s": 0.0,  # the longest model load of a task (device choice and torch's import included)
        "stage_s": dict.fromkeys(STAGES, 0.0),
        "latency_hist": [0] * N_BUCKETS,
        "call_hist": [0] * N_BUCKETS,
        "queue_hist": [0] * N_BUCKETS,
        "server_compute_hist": [0] * N_BUCKETS,
        "requests": 0,  # to executor model servers
        "server_batches": 0.0,  # model batches those requests rode in: each request's share of its batch
        "servers": {},  # server (host:pid) -> {"loads", "device", "executor"}
        "loads_by_worker": {},
        "device_by_worker": {},
        "gpu_addresses_by_worker": {},
    }


def record_batch(
    stats: dict[str, Any], rows: int, decode_s: float, compute_s: float, encode_s: float
) -> None:
    """Add one Arrow batch's timings (its model calls are counted where they run, in ``batches``); its
    latency is the sum of its three stages."""
    stats["rows"] += rows
    stats["arrow_batches"] += 1
    for stage, seconds in zip(STAGES, (decode_s, compute_s, encode_s), strict=True):
        stats["stage_s"][stage] += seconds
    stats["latency_hist"][bucket_of((decode_s + compute_s + encode_s) * 1000.0)] += 1


def record_request(
    stats: dict[str, Any], rows: int, info: dict[str, Any], device: str, executor_pid: int
) -> None:
    """Add one model-server request: its queue wait and compute, its share of the model batch it rode in
    (the shares of a batch's requests add up to one batch), and the server that answered."""
    stats["requests"] += 1
    stats["server_batches"] += rows / max(1, int(info["batch_rows"]))
    stats["queue_hist"][bucket_of(float(info["queue_ms"]))] += 1
    stats["server_compute_hist"][bucket_of(float(info["compute_ms"]))] += 1
    host = str(info["server"]).rsplit(":", 1)[0]
    stats["servers"][info["server"]] = {
        "loads": int(info["loads"]),
        "device": device,
        "executor": f"{host}:{executor_pid}",
    }


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    for key in ("rows", "batches", "arrow_batches", "tasks", "oom_backoffs", "invalid_rows", "task_s"):
        into[key] += other[key]
    for stage in STAGES:
        into["stage_s"][stage] += other["stage_s"][stage]
    for name in HISTOGRAMS:
        into[name] = [a + b for a, b in zip(into[name], other.get(name) or [0] * N_BUCKETS, strict=True)]
    firsts = [t for t in (into["first_at"], other.get("first_at", 0.0)) if t]
    into["first_at"] = min(firsts) if firsts else 0.0
    into["last_at"] = max(into["last_at"], other.get("last_at", 0.0))
    into["load_s"] = max(into["load_s"], other.get("load_s", 0.0))
    into["requests"] += other.get("requests", 0)
    into["server_batches"] += other.get("server_batches", 0.0)
    for server, facts in other.get("servers", {}).items():
        known = into["servers"].setdefault(server, facts)
        known["loads"] = max(known["loads"], facts["loads"])
    for worker, loads in other["loads_by_worker"].items():
        into["loads_by_worker"][worker] = into["loads_by_worker"].get(worker, 0) + loads
    into["device_by_worker"].update(other["device_by_worker"])
    for worker, addresses in other["gpu_addresses_by_worker"].items():
        seen = set(into["gpu_addresses_by_worker"].get(worker, [])) | set(addresses)
        into["gpu_addresses_by_worker"][worker] = sorted(seen)
    return into


def latency_percentile_ms(stats: dict[str, Any], q: float, histogram: str = "latency_hist") -> float:
    """The ``q`` quantile (0..1) of a latency histogram (batch latency by default), as the upper bound of
    its bucket."""
    total = sum(stats[histogram])
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, count in enumerate(stats[histogram]):
        seen += count
        if seen >= rank:
            return bucket_upper_ms(index)
    return bucket_upper_ms(N_BUCKETS - 1)


def summary_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The job metrics logged to MLflow: loads, batch latency P50/P99, and the per-stage breakdown."""
    arrow_batches = max(stats["arrow_batches"], 1)
    metrics = {
        "model_loads": float(sum(stats["loads_by_worker"].values())),
        "scoring_workers": float(len(stats["loads_by_worker"])),  # Python workers that scored rows
        "scoring_tasks": float(stats["tasks"]),
        "rows_through_models": float(stats["rows"]),  # each row decoded once (twice if a task retried)
        "model_batches": float(stats["batches"]),  # model calls
        "arrow_batches": float(stats["arrow_batches"]),  # latencies and stage means are per Arrow batch
        "oom_backoffs": float(stats["oom_backoffs"]),
        "invalid_rows": float(stats["invalid_rows"]),
        "batch_latency_p50_ms": latency_percentile_ms(stats, 0.50),
        "batch_latency_p99_ms": latency_percentile_ms(stats, 0.99),
        "model_call_p50_ms": latency_percentile_ms(stats, 0.50, "call_hist"),
        "model_call_p99_ms": latency_percentile_ms(stats, 0.99, "call_hist"),
        "task_total_s": stats["task_s"],
        "task_us_per_row": stats["task_s"] * 1e6 / max(stats["rows"], 1),
        "model_load_s": stats["load_s"],
        "scoring_window_s": max(0.0, stats["last_at"] - stats["first_at"]) if stats["first_at"] else 0.0,
    }
    for stage in STAGES:
        metrics[f"{stage}_total_s"] = stats["stage_s"][stage]
        metrics[f"{stage}_mean_ms"] = stats["stage_s"][stage] * 1000.0 / arrow_batches
    if stats["requests"]:
        metrics.update(server_metrics(stats))
    return metrics


def server_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """``model.sharing: executor``: the servers, their loads and copies, and the requests' batching and
    latency (queue wait and compute)."""
    servers = stats["servers"]
    copies: dict[tuple[str, str], int] = {}
    for facts in servers.values():
        key = (facts["executor"], facts["device"])
        copies[key] = copies.get(key, 0) + 1
    batches = max(stats["server_batches"], 1e-9)
    return {
        "model_servers": float(len(servers)),
        "server_model_loads": float(sum(f["loads"] for f in servers.values())),
        "model_copies_per_executor_device": float(max(copies.values())),
        "server_requests": float(stats["requests"]),
        "server_model_batches": round(stats["server_batches"], 3),
        "server_rows_per_model_batch": stats["rows"] / batches,
        "request_queue_p50_ms": latency_percentile_ms(stats, 0.50, "queue_hist"),
        "request_queue_p99_ms": latency_percentile_ms(stats, 0.99, "queue_hist"),
        "request_compute_p50_ms": latency_percentile_ms(stats, 0.50, "server_compute_hist"),
        "request_compute_p99_ms": latency_percentile_ms(stats, 0.99, "server_compute_hist"),
    }


def to_json(stats: dict[str, Any]) -> str:
    """A task's stats as the JSON it sends (the latency histogram sparse: bucket -> count)."""
    sparse = {name: {str(i): n for i, n in enumerate(stats[name]) if n} for name in HISTOGRAMS}
    return json.dumps({**stats, **sparse}, separators=(",", ":"))


def from_json(text: str) -> dict[str, Any]:
    """The stats :func:`to_json` sent."""
    stats: dict[str, Any] = json.loads(text)
    for name in HISTOGRAMS:
        histogram = [0] * N_BUCKETS
        for index, count in (stats.get(name) or {}).items():
            histogram[int(index)] = count
        stats[name] = histogram
    return stats


def merged(texts: Iterable[str]) -> dict[str, Any]:
    """The job's stats: every task's, merged."""
    total = empty_stats()
    for text in texts:
        merge(total, from_json(text))
    return total
