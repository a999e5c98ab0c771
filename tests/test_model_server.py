"""``model.sharing: executor``: one model server per executor and device, shared by its tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from batchscore.jobs.demo import FEATURES
from batchscore.jobs.planning import Lineage, PlanRequest, build_plan
from batchscore.jobs.registry import resolve_model
from batchscore.jobs.scoring import RuntimeStats, transform
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, job_config, model_servers


def _scored(spark, registry: Registry, input_path: str, partitions: int, **model) -> tuple[dict, dict]:
    cfg = job_config(input_path, "unused", **model)
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    df = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[0]}'").repartition(partitions)
    plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
    stats = RuntimeStats()
    rows = transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, "t"), stats).collect()
    return {r["transaction_id"]: r["fraud_score"] for r in rows}, stats.merged()


def test_local_session_scores_through_one_server_equal_to_worker_mode(spark, registry, input_path) -> None:
    ours, stats = _scored(spark, registry, input_path, 8, batch_size=16, sharing="executor")
    theirs, _ = _scored(spark, registry, input_path, 8, batch_size=16)
    assert len(ours) == ROWS_PER_DAY and ours.keys() == theirs.keys()
    keys = sorted(ours)
    assert_close(np.array([ours[k] for k in keys]), np.array([theirs[k] for k in keys]))
    assert len(stats["servers"]) == 1, stats["servers"]
    assert [s["loads"] for s in stats["servers"].values()] == [1]
    assert sum(stats["loads_by_worker"].values()) == 0, "workers load nothing in executor mode"
    assert stats["requests"] >= ROWS_PER_DAY // 16
    # The same rows with every frame over the socket (shared memory off): the same scores, bit for bit.
    socket_only, _ = _scored(
        spark, registry, input_path, 8, batch_size=16, sharing="executor",
        server={"shared_memory_min_bytes": None},
    )  # fmt: skip
    assert socket_only == ours


def _kill_all_servers() -> None:
    """Servers that earlier tests of this session left for their idle timeout: not a test's to fault."""
    import psutil

    for proc in model_servers():
        proc.kill()
    psutil.wait_procs(model_servers(), timeout=10)


def test_a_server_killed_while_it_loads_is_started_again(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import threading

    from batchscore.jobs.score import run

    _kill_all_servers()
    killed: list[int] = []

    def kill_the_first() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for proc in model_servers():
                proc.kill()  # within milliseconds of its start: before it listens
                killed.append(proc.pid)
            time.sleep(0.005)

    thread = threading.Thread(target=kill_the_first)
    thread.start()
    cfg = job_config(input_path, str(tmp_path / "out"), sharing="executor")
    result = run(spark, cfg, DATES[0])
    thread.join()
    assert killed, "a server was killed"
    assert result.rows_scored == ROWS_PER_DAY and result.runtime["model_servers"] == 1
    out = spark.read.format("delta").load(str(tmp_path / "out"))
    assert out.count() == out.select("transaction_id").distinct().count() == ROWS_PER_DAY


def test_a_hung_server_fails_the_job_in_one_line_and_the_next_run_starts_a_fresh_one(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import psutil

    from batchscore.jobs.errors import ExecutorError
    from batchscore.jobs.score import run

    _kill_all_servers()
    cfg = job_config(input_path, str(tmp_path / "out"), sharing="executor", server={"request_timeout_s": 3})
    run(spark, cfg, DATES[0])
    found = model_servers()
    assert len(found) == 1, "the first run left its one server running"
    for proc in found:
        proc.suspend()  # SIGSTOP: it accepts connections (the kernel does) but answers nothing
    started = time.monotonic()
    with pytest.raises(
        ExecutorError, match=r"model server for models:/fraud/\d+ on cpu .* did not answer within "
    ):
        run(spark, cfg, DATES[1])
    assert time.monotonic() - started < 60, "bounded by request_timeout_s, not by the job"
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in found), "killed as hung"
    result = run(spark, cfg, DATES[1])
    assert result.rows_scored == ROWS_PER_DAY and result.runtime["model_servers"] == 1


ROOT = Path(__file__).resolve().parent.parent
BIG_MB = 200  # the model's weights: about 210 MB of float32


@pytest.fixture(scope="module")
def big_model(registry: Registry) -> str:
    """A 52 M-parameter MLP (about 210 MB) over the demo's 16 features, registered once."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(len(FEATURES), 8192),
        torch.nn.ReLU(),
        torch.nn.Linear(8192, 6400),
        torch.nn.ReLU(),
        torch.nn.Linear(6400, 1),
        torch.nn.Sigmoid(),
    ).eval()
    assert sum(p.numel() for p in module.parameters()) * 4 > BIG_MB * 1e6
    signature = ModelSignature(
        Schema([ColSpec("double", f) for f in FEATURES]), Schema([ColSpec("double", "fraud_score")])
    )
    mlflow.set_tracking_uri(registry.tracking_uri)
    mlflow.set_experiment("tests")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            signature=signature,
            registered_model_name="fraud_big",
            serialization_format="pickle",
        )
    return f"models:/fraud_big/{info.registered_model_version}"


def _probe(input_path: str, model_uri: str, sharing: str, *options: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.server_probe", input_path, DATES[0], model_uri, sharing, *options],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env or dict(os.environ), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def worker_mode(input_path: str, big_model: str) -> dict:
    return _probe(input_path, big_model, "worker")


@pytest.fixture(scope="module")
def executor_mode(input_path: str, big_model: str) -> dict:
    """Two jobs in one session, more than a minute apart (Spark stops Python workers idle for 60 s)."""
    return _probe(input_path, big_model, "executor", "--jobs", "2", "--gap", "65")


def _scores(job: dict) -> dict[int, float]:
    return {key: score for key, score in job["scores"]}


@pytest.mark.slow
def test_one_model_load_per_executor_and_device_with_scores_equal_to_worker_mode(
    worker_mode: dict, executor_mode: dict
) -> None:
    first = executor_mode["jobs"][0]
    stats, metrics = first["stats"], first["metrics"]
    assert executor_mode["executors"] == 2
    assert stats["tasks"] >= 8, "at least 8 tasks, two at a time on each executor"
    executors = {facts["executor"] for facts in stats["servers"].values()}
    assert len(executors) == 2, f"both executors scored through a server of their own: {stats['servers']}"
    assert metrics["model_servers"] == 2 and metrics["server_model_loads"] == 2
    assert metrics["model_copies_per_executor_device"] == 1
    assert sum(stats["loads_by_worker"].values()) == 0
    assert metrics["server_requests"] >= ROWS_PER_DAY // 16
    assert metrics["request_queue_p99_ms"] > 0 and metrics["request_compute_p99_ms"] > 0
    ours, theirs = _scores(first), _scores(worker_mode["jobs"][0])
    assert len(ours) == ROWS_PER_DAY and ours.keys() == theirs.keys()
    keys = sorted(ours)
    assert_close(np.array([ours[k] for k in keys]), np.array([theirs[k] for k in keys]))
    loads = worker_mode["jobs"][0]["stats"]["loads_by_worker"]
    assert sum(loads.values()) == len(loads) >= 3, f"worker mode loads once per worker: {loads}"


@pytest.mark.slow
def test_an_executor_holds_about_one_copy_of_the_model(worker_mode: dict, executor_mode: dict) -> None:
    """Anonymous memory of each executor's Python processes, from /proc, after a job: one copy in the
    server and none in the workers, against one per worker that scored."""
    for executor, memory in executor_mode["jobs"][0]["memory"].items():
        assert len(memory["servers_mib"]) == 1, (executor, memory)
        assert memory["servers_mib"][0] >= BIG_MB, (executor, memory)
        assert all(m < BIG_MB / 2 for m in memory["workers_mib"]), ("no copy in a worker", executor, memory)
    worker_totals = sorted(sum(m["workers_mib"]) for m in worker_mode["jobs"][0]["memory"].values())
    executor_totals = sorted(
        sum(m["workers_mib"]) + sum(m["servers_mib"]) for m in executor_mode["jobs"][0]["memory"].values()
    )
    assert worker_totals[-1] >= 2 * BIG_MB, f"two workers of an executor each hold a copy: {worker_totals}"
    assert executor_totals[-1] < worker_totals[-1] - BIG_MB * 0.75, (executor_totals, worker_totals)


@pytest.mark.slow
def test_a_later_job_after_the_workers_were_stopped_scores_correctly(executor_mode: dict) -> None:
    first, second = executor_mode["jobs"]
    assert _scores(second) == _scores(first)
    servers = second["stats"]["servers"]
    assert len(servers) == 2 and all(facts["loads"] == 1 for facts in servers.values())
    # The servers outlived the Python workers Spark stopped after a minute idle: the same ones answered.
    assert set(servers) == set(first["stats"]["servers"])
    assert executor_mode["servers_after_stop"] == [], "the servers exit with their executors"


@pytest.mark.slow
def test_a_server_killed_mid_job_is_replaced_and_the_job_scores_every_row_once(
    registry: Registry, input_path: str
) -> None:
    faults = str(ROOT / "tests" / "faults")
    env = {**os.environ, "PYTHONPATH": faults, "BATCHSCORE_FAULT": "slow:0.05"}
    result = _probe(
        input_path, f"models:/fraud/{registry.champion}", "executor", "--kill-server-after", "3", env=env
    )
    job = result["jobs"][0]
    assert job["killed"], "a server was killed during the job"
    keys = [key for key, _ in job["scores"]]
    assert len(keys) == len(set(keys)) == ROWS_PER_DAY, "every row once: no duplicates, no gaps"
    assert all(score is not None for _, score in job["scores"])
    assert (
        job["killed"][0] not in {int(s.rsplit(":", 1)[1]) for s in job["stats"]["servers"]}
        or len(job["stats"]["servers"]) > 2
    ), "a fresh server answered after the kill"
