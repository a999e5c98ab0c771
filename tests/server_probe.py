"""Scores the test input on ``local-cluster[2,2,2048]`` (two executors, two task slots each) in its own
process and prints JSON: per job the scores, the workers' merged stats, and the resident memory of each
executor's Python processes (workers and model servers) read from /proc after the job. Used by
``tests/test_model_server.py``.

    python -m tests.server_probe <input_path> <ds> <model_uri> <worker|executor> [--jobs N] [--gap S]
                                 [--kill-server-after S]

``--jobs``: jobs run one after another in the same session, ``--gap`` seconds apart; ``--kill-server-after``:
SIGKILL one model server that many seconds into the first job.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from batchscore.jobs.planning import Lineage, PlanRequest, build_plan
from batchscore.jobs.registry import resolve_model
from batchscore.jobs.scoring import RuntimeStats, transform
from batchscore.jobs.session import get_or_create_session
from batchscore.jobs.tracking import tracking_target
from tests.helpers import job_config, model_servers

PARTITIONS = 16  # 8 per executor, 2 at a time on each


def anon_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("RssAnon:")), "RssAnon: 0 kB")
    return int(line.split()[1]) / 1024


# Servers of other sessions on this machine (the test suite's own local session keeps its servers until
# their idle timeout): never counted, never killed here.
OTHERS = {(p.pid, p.create_time()) for p in model_servers()}


def servers() -> list[psutil.Process]:
    """The model servers this probe's cluster started."""
    return [p for p in model_servers() if (p.pid, p.create_time()) not in OTHERS]


def executor_memory(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per executor JVM: the anonymous memory of its Python workers, and of the model servers that
    answered its tasks."""
    me = psutil.Process()
    result: dict[str, dict[str, Any]] = {}
    for proc in me.children(recursive=True):
        try:
            if "CoarseGrainedExecutorBackend" not in " ".join(proc.cmdline()):
                continue
            workers = [
                c.pid
                for c in proc.children(recursive=True)
                if "python" in c.name() and "batchscore.udfs.model_server" not in c.cmdline()
            ]
        except psutil.Error:
            continue
        result[str(proc.pid)] = {"workers_mib": [anon_mib(p) for p in workers], "servers_mib": []}
    for server, facts in stats.get("servers", {}).items():
        executor = facts["executor"].rsplit(":", 1)[1]
        result.setdefault(executor, {"workers_mib": [], "servers_mib": []})
        result[executor]["servers_mib"].append(anon_mib(int(server.rsplit(":", 1)[1])))
    return result


def kill_a_server_after(seconds: float, killed: list[int]) -> None:
    deadline = time.monotonic() + seconds + 120
    time.sleep(seconds)
    while time.monotonic() < deadline:
        found = servers()
        if found:
            found[0].send_signal(signal.SIGKILL)
            killed.append(found[0].pid)
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("input_path")
    parser.add_argument("ds")
    parser.add_argument("model_uri")
    parser.add_argument("sharing", choices=("worker", "executor"))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--gap", type=float, default=0.0)
    parser.add_argument("--kill-server-after", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    spark, _ = get_or_create_session(
        "local",
        {
            "spark.master": "local-cluster[2,2,2048]",
            "spark.python.worker.reuse": "true",
            "spark.task.maxFailures": "1",  # a killed server must not need a task retry
            "spark.ui.enabled": "false",
        },
    )
    cfg = job_config(
        args.input_path, "unused", uri=args.model_uri, batch_size=args.batch_size, sharing=args.sharing
    )
    resolved = resolve_model(cfg.model.uri, tracking_target(cfg.mlflow).tracking_uri)
    jobs = []
    try:
        for index in range(args.jobs):
            if index:
                time.sleep(args.gap)
            killed: list[int] = []
            if args.kill_server_after is not None and index == 0:
                threading.Thread(target=kill_a_server_after, args=(args.kill_server_after, killed)).start()
            df = spark.read.format("delta").load(args.input_path).where(f"ds = '{args.ds}'")
            df = df.repartition(PARTITIONS)
            stats = RuntimeStats()
            plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
            scored = transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, "probe"), stats)
            rows = scored.select("transaction_id", "fraud_score").collect()
            merged = stats.merged()
            jobs.append(
                {
                    "scores": [[r["transaction_id"], r["fraud_score"]] for r in rows],
                    "stats": merged,
                    "metrics": stats.summary(),
                    "memory": executor_memory(merged),
                    "killed": killed,
                    "servers_alive": [p.pid for p in servers()],
                }
            )
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    finally:
        spark.stop()
    # The servers exit with their executors.
    running = [p.pid for p in servers()]
    deadline = time.monotonic() + 15
    while running and time.monotonic() < deadline:
        time.sleep(0.5)
        running = [p.pid for p in servers()]
    print(json.dumps({"jobs": jobs, "executors": executors, "servers_after_stop": running}))


if __name__ == "__main__":
    main()
