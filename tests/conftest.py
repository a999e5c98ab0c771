"""Shared fixtures: one local SparkSession, one MLflow registry with real torch models, small Delta inputs.

Everything is real (Spark, Delta, MLflow on SQLite, torch); state lives in a per-session temporary
BATCHSCORE_HOME. Delta's jars come from the project's cache (``make setup``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_JARS = Path(os.environ.get("BATCHSCORE_JARS_DIR") or ROOT / ".batchscore" / "jars")
DATES = ("2026-11-27", "2026-11-28", "2026-11-29")
ROWS_PER_DAY = 400


@pytest.fixture(scope="session")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh BATCHSCORE_HOME for the test session, sharing the project's cached Delta jars."""
    if not (PROJECT_JARS / "MANIFEST").is_file():
        pytest.fail(f"Delta jars are not cached in {PROJECT_JARS}; run `make setup` first")
    path = tmp_path_factory.mktemp("batchscore-home")
    saved = {k: os.environ.get(k) for k in ("BATCHSCORE_HOME", "BATCHSCORE_JARS_DIR", "PYSPARK_PYTHON")}
    os.environ["BATCHSCORE_HOME"] = str(path)
    os.environ["BATCHSCORE_JARS_DIR"] = str(PROJECT_JARS)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    yield path
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def spark(home: Path) -> Iterator[object]:
    """One local SparkSession for the whole run: 2 cores, worker reuse on, no task retries."""
    from batchscore.jobs.session import get_or_create_session

    session, created = get_or_create_session(
        "local",
        {
            "spark.master": "local[2]",
            "spark.task.maxFailures": "1",
            "spark.sql.shuffle.partitions": "2",
            "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled": "false",
            "spark.sql.warehouse.dir": str(home / "warehouse" / "catalog"),
        },
    )
    assert created
    yield session
    session.stop()


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    champion: str
    challenger: str


@pytest.fixture(scope="session")
def registry(home: Path) -> Registry:
    """The local MLflow registry with model ``fraud``: two different torch MLPs, aliased."""
    from batchscore.jobs.config import MlflowSection
    from batchscore.jobs.demo import register_demo_models
    from batchscore.jobs.home import default_tracking_uri

    models = register_demo_models(MlflowSection())
    assert models.champion_version != models.challenger_version
    return Registry(default_tracking_uri(home), models.champion_version, models.challenger_version)


@pytest.fixture
def promo(registry: Registry) -> str:
    """Model 'promo': the two fraud versions again, aliased champion / challenger (the session's 'fraud'
    aliases stay untouched)."""
    import uuid

    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    name = f"promo_{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    versions = []
    for source in (registry.champion, registry.challenger):
        original = client.get_model_version("fraud", source)
        versions.append(client.create_model_version(name, original.source, original.run_id).version)
    client.set_registered_model_alias(name, "champion", versions[0])
    client.set_registered_model_alias(name, "challenger", versions[1])
    return name


@pytest.fixture(scope="session")
def input_path(spark: object, home: Path) -> str:
    """A Delta table of synthetic transactions, partitioned by ``ds`` (three days)."""
    from batchscore.jobs.demo import write_demo_input

    path = str(home / "warehouse" / "transactions")
    write_demo_input(spark, path, ROWS_PER_DAY, DATES)  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="session")
def connect_url(spark: object, home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Spark Connect server on loopback for the test session (its own JVM: spark-submit's
    ``SparkConnectServer`` with Delta's cached jars and extension, 2 cores, no task retries), as the
    ``sc://`` URL clients give in ``SPARK_REMOTE``. Jobs reach it from their own processes: a process with a
    Connect session cannot also hold the classic one the other tests share."""
    import socket
    import subprocess
    import time

    from pyspark.find_spark_home import _find_spark_home

    from batchscore.jobs.jars import cached_delta_jars
    from batchscore.jobs.session import DELTA_CONF

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    work = tmp_path_factory.mktemp("connect-server")
    log_path = work / "server.log"
    conf = {
        **DELTA_CONF,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.ui.enabled": "false",
        "spark.task.maxFailures": "1",
        "spark.python.worker.reuse": "true",
        "spark.sql.warehouse.dir": str(home / "warehouse" / "connect-catalog"),
    }
    command = [
        str(Path(_find_spark_home()) / "bin" / "spark-submit"),
        "--class",
        "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master",
        "local[2]",
        "--jars",
        ",".join(cached_delta_jars()),
        *(arg for key, value in conf.items() for arg in ("--conf", f"{key}={value}")),
        "spark-internal",
    ]
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            command, cwd=work, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ}
        )
    try:
        deadline = time.monotonic() + 180
        while "Spark Connect server started" not in log_path.read_text():
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Spark Connect server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def mlflow_server(registry: Registry, home: Path, tmp_path: Path):
    """A real ``mlflow server`` on loopback over the test registry's SQLite store."""
    import socket
    import subprocess
    import sys
    import time

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mlflow = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", registry.tracking_uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()}")
            time.sleep(0.5)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
