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
    from jobs.session import get_or_create_session

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
    from jobs.config import MlflowSection
    from jobs.demo import register_demo_models
    from jobs.home import default_tracking_uri

    models = register_demo_models(MlflowSection())
    assert models.champion_version != models.challenger_version
    return Registry(default_tracking_uri(home), models.champion_version, models.challenger_version)


@pytest.fixture(scope="session")
def input_path(spark: object, home: Path) -> str:
    """A Delta table of synthetic transactions, partitioned by ``ds`` (three days)."""
    from jobs.demo import write_demo_input

    path = str(home / "warehouse" / "transactions")
    write_demo_input(spark, path, ROWS_PER_DAY, DATES)  # type: ignore[arg-type]
    return path
