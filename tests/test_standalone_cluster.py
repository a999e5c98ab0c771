"""``batchscore submit`` on a real Spark standalone cluster: a master and two workers on 127.0.0.1, each with
its own work dir, and executors whose Python does *not* have batchscore.

The executors' Python is a virtualenv that sees the project's dependencies (as a cluster image would) but
not the project: batchscore reaches them only with the job, either as the package ``batchscore submit``
ships by itself or as the built wheel given with ``--py-files``. Models come from a real ``mlflow server``
on loopback with its own artifact store, the way executors on other hosts would reach them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import DATES
from tests.helpers import job_config, with_sections

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FILES = 6  # input files in the scored partition: enough tasks for both executors


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(what: str, ready: Any, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 90
    while not ready():
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            tails = "\n".join(f"{log}:\n{log.read_text()[-2000:]}" for log in logs if log.exists())
            pytest.fail(f"{what} did not start:\n{tails}")
        time.sleep(0.5)


def _json(url: str) -> Any:
    try:
        return requests.get(url, timeout=2).json()
    except (requests.RequestException, ValueError):
        return None


@dataclass
class Cluster:
    master: str
    master_ui: str
    work_dirs: list[Path]
    tracking_uri: str
    executor_python: Path
    event_dir: Path
    env: dict[str, str]


def _executor_python(folder: Path) -> Path:
    """A virtualenv that imports batchscore's dependencies from this test's environment but not batchscore:
    the dependencies' folder is a plain path entry, so the editable install's import hook (a .pth file
    there) never runs in it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / "batchscore_deps.pth").write_text(f"{purelib}\n")
    python = folder / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import torch, pyspark, mlflow\ntry:\n import batchscore\nexcept ImportError:\n"
         " print('no batchscore')"],
        cwd=folder, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert probe.stdout.strip() == "no batchscore", probe.stdout + probe.stderr
    return python


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from pyspark.find_spark_home import _find_spark_home

    base = tmp_path_factory.mktemp("standalone")
    spark_home = _find_spark_home()
    # Nothing of the test session's own registry (mlflow.set_*_uri exports MLFLOW_* to child processes).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "SPARK_REMOTE", "MASTER") and not k.startswith("MLFLOW_")
    }
    env.update(SPARK_HOME=spark_home, SPARK_LOCAL_IP="127.0.0.1", SPARK_LOG_DIR=str(base / "logs"))
    spark_class = str(Path(spark_home) / "bin" / "spark-class")
    port, ui, mlflow_port = _free_port(), _free_port(), _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, command: list[str], cwd: Path) -> None:
        log = base / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
            )

    try:
        # A tracking server with its own store and artifact root; the models are logged through it.
        start(
            "mlflow",
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
             "--port", str(mlflow_port), "--workers", "1"],
            base,
        )  # fmt: skip
        start(
            "master",
            [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui)],
            base,
        )  # fmt: skip
        master, master_ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}"
        _wait("the master", lambda: _json(f"{master_ui}/json/") is not None, processes, logs)
        work_dirs = [base / f"worker{i}" for i in (1, 2)]
        for i, work_dir in enumerate(work_dirs, 1):
            work_dir.mkdir()
            start(
                f"worker{i}",
                [spark_class, "org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
                 "--cores", "1", "--memory", "1g", "--work-dir", str(work_dir), "--webui-port", "0"],
                base,
            )  # fmt: skip

        def workers_alive() -> bool:
            state = _json(f"{master_ui}/json/") or {}
            return sum(w.get("state") == "ALIVE" for w in state.get("workers", [])) == 2

        _wait("two workers", workers_alive, processes, logs)
        tracking_uri = f"http://127.0.0.1:{mlflow_port}"
        search = f"{tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
        _wait("mlflow server", lambda: _json(search) is not None, processes, logs)
        register = (
            "from batchscore.jobs.config import MlflowSection\n"
            "from batchscore.jobs.demo import register_demo_models\n"
            f"register_demo_models(MlflowSection(tracking_uri={tracking_uri!r}))\n"
        )
        subprocess.run([sys.executable, "-c", register], env=env, cwd=base, check=True, timeout=300)
        event_dir = base / "events"
        event_dir.mkdir()
        yield Cluster(
            master,
            master_ui,
            work_dirs,
            tracking_uri,
            _executor_python(base / "executor-venv"),
            event_dir,
            env,
        )
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cluster_input(spark: Any, input_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two days of the session's input, each day in several files."""
    path = str(tmp_path_factory.mktemp("cluster-input") / "transactions")
    source = spark.read.format("delta").load(input_path).where(f"ds IN ('{DATES[0]}', '{DATES[1]}')")
    source.repartition(FILES, "transaction_id").write.format("delta").partitionBy("ds").save(path)
    return path


def _submit(
    cluster: Cluster, tmp_path: Path, cfg_path: Path, ds: str, *extra: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "batchscore"), "submit", "score", "--config", str(cfg_path), "--ds", ds,
         "--master", cluster.master, *extra],
        env={**cluster.env, "PYSPARK_PYTHON": str(cluster.executor_python),
             "PYSPARK_DRIVER_PYTHON": sys.executable, "BATCHSCORE_HOME": str(tmp_path / "home")},
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _config(cluster: Cluster, tmp_path: Path, input_path: str, output: str, app: str) -> Path:
    cfg = with_sections(
        job_config(input_path, output),
        mlflow={"tracking_uri": cluster.tracking_uri, "experiment": "cluster"},
        spark={
            "profile": "cluster",
            "conf": {
                "spark.app.name": app,
                "spark.executor.cores": "1",
                "spark.cores.max": "2",
                "spark.executor.memory": "512m",
                "spark.eventLog.enabled": "true",
                "spark.eventLog.dir": cluster.event_dir.as_uri(),
                "spark.eventLog.rolling.enabled": "false",
                "spark.eventLog.compress": "false",
            },
        },
    )
    path = tmp_path / f"{app}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(exclude_none=True)))
    return path


def _tasks_by_executor(cluster: Cluster, app: str) -> dict[str, int]:
    """Finished tasks per executor id, from the application's event log."""
    counts: dict[str, int] = {}
    for log in cluster.event_dir.iterdir():
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        start = next(e for e in lines if e["Event"] == "SparkListenerApplicationStart")
        if start["App Name"] != app:
            continue
        for event in lines:
            if event["Event"] == "SparkListenerTaskEnd" and event["Task End Reason"]["Reason"] == "Success":
                executor = event["Task Info"]["Executor ID"]
                counts[executor] = counts.get(executor, 0) + 1
    return counts


def _runtime_metrics(cluster: Cluster, stdout: str) -> dict[str, float]:
    from mlflow import MlflowClient

    run_id = re.search(r"job run ([0-9a-f]{32})", stdout)
    assert run_id, stdout
    return dict(
        MlflowClient(cluster.tracking_uri, cluster.tracking_uri).get_run(run_id.group(1)).data.metrics
    )


def _check_scored(  # noqa: PLR0917 (one call per test)
    spark: Any, cluster: Cluster, source_path: str, output: str, ds: str, app: str, proc
) -> None:
    from mlflow import MlflowClient

    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    table = spark.read.format("delta").load(output).where(f"ds = '{ds}'")
    source = spark.read.format("delta").load(source_path).where(f"ds = '{ds}'")
    assert table.count() == source.count() > 0
    champion = MlflowClient(cluster.tracking_uri, cluster.tracking_uri).get_model_version_by_alias(
        "fraud", "champion"
    )
    lineage = table.select("model_name", "model_version", "model_run_id").distinct().collect()
    assert [tuple(r) for r in lineage] == [("fraud", str(champion.version), champion.run_id)]
    assert table.where("fraud_score IS NULL").count() == 0
    # The master ran the application on both workers: each has the app's work dir, each executor ran tasks.
    apps = [a for a in _json(f"{cluster.master_ui}/json/")["completedapps"] if a["name"] == app]
    assert len(apps) == 1, apps
    for work_dir in cluster.work_dirs:
        assert (work_dir / apps[0]["id"]).is_dir(), f"{work_dir} ran nothing of {apps[0]['id']}"
    tasks = _tasks_by_executor(cluster, app)
    assert len(tasks) == 2 and "driver" not in tasks, tasks
    # One Python worker per one-core executor, each loading the model once.
    metrics = _runtime_metrics(cluster, proc.stdout)
    assert metrics["scoring_workers"] == 2, metrics
    assert metrics["model_loads"] == 2, metrics


def test_submit_ships_batchscore_to_executors_that_lack_it(
    spark, cluster: Cluster, cluster_input: str, tmp_path
):
    output = str(tmp_path / "scores")
    cfg = _config(cluster, tmp_path, cluster_input, output, "bs-shipped")
    proc = _submit(cluster, tmp_path, cfg, DATES[0])
    _check_scored(spark, cluster, cluster_input, output, DATES[0], "bs-shipped", proc)
    shipped = list((tmp_path / "home" / "ship").glob("batchscore-*.zip"))
    assert len(shipped) == 1, shipped


def test_the_built_wheel_travels_with_the_job(spark, cluster: Cluster, cluster_input: str, tmp_path):
    wheels = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(ROOT)],
        check=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = wheels.glob("batchscore-*.whl")
    output = str(tmp_path / "scores")
    cfg = _config(cluster, tmp_path, cluster_input, output, "bs-wheel")
    proc = _submit(cluster, tmp_path, cfg, DATES[1], "--py-files", str(wheel), "--no-ship")
    _check_scored(spark, cluster, cluster_input, output, DATES[1], "bs-wheel", proc)


def test_executors_without_batchscore_fail_with_one_line_that_says_what_to_ship(
    cluster: Cluster, cluster_input: str, tmp_path: Path
):
    cfg = _config(cluster, tmp_path, cluster_input, str(tmp_path / "scores"), "bs-unshipped")
    proc = _submit(cluster, tmp_path, cfg, DATES[0], "--no-ship")
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-6000:]
    # One error line of ours (Spark's own WARN lines may show the worker's exception before it). spark-submit
    # passes the Python driver's stderr on to its stdout.
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if "ERROR batchscore" in line]
    assert len(errors) == 1, output[-6000:]
    assert "executors cannot import batchscore" in errors[0] and "--py-files" in errors[0], errors
    assert not (tmp_path / "scores").exists()
