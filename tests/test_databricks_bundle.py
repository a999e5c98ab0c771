"""``databricks.yml``: its structure, what it references, and what the wheel it builds supports.

No workspace is reachable from here, so nothing is deployed: the test builds the wheel with the bundle's own
build command, resolves the bundle's variables and dynamic values as Databricks would, and checks each task
against the built wheel (package, entry point, Python, dependencies) and the job's own argument parser and
config loader.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from batchscore.jobs.config import load_job_config
from batchscore.jobs.runner import job_parser, shifted_ds
from batchscore.udfs.worker_memory import ARROW_JEMALLOC_CONF

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = yaml.safe_load((ROOT / "databricks.yml").read_text())
JOBS = BUNDLE["resources"]["jobs"]
# Spark and Python of the Databricks runtimes and serverless environment versions the bundle may name
# (Databricks' release notes). The wheel needs Spark 4's API.
RUNTIMES = {"17.3": ("4.0.0", "3.12"), "16.4": ("3.5.2", "3.12"), "15.4": ("3.5.0", "3.11")}
SERVERLESS = {"4": ("4.0.0", "3.12"), "3": ("3.5.2", "3.12"), "2": ("3.5.0", "3.11")}
RUN_DATE = "2026-12-07"


def _resolve(value: str) -> str:
    """The bundle's ``${var.*}``/``${workspace.file_path}`` and the job's ``{{…}}`` references, as a run
    on 2026-12-07 with the variables' defaults sees them (the workspace's files are this repository)."""
    for _ in range(3):
        value = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(BUNDLE["variables"][m[1]]["default"]), value)
    value = value.replace("${workspace.file_path}", str(ROOT))
    value = value.replace("{{job.start_time.iso_date}}", RUN_DATE)
    assert "${" not in value, value
    return value


def _job_parameter(job: dict[str, Any], name: str) -> str:
    return _resolve(next(p["default"] for p in job["parameters"] if p["name"] == name))


def _arguments(job: dict[str, Any], task: dict[str, Any]) -> list[str]:
    def one(argument: str) -> str:
        return re.sub(
            r"\{\{job\.parameters\.(\w+)\}\}", lambda m: _job_parameter(job, m[1]), _resolve(argument)
        )

    return [one(a) for a in task["python_wheel_task"]["parameters"]]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built by the bundle's artifact command (into a temporary dist/, with this environment's
    setuptools instead of an isolated download)."""
    artifact = BUNDLE["artifacts"]["batchscore"]
    assert artifact["type"] == "whl" and (ROOT / artifact["path"]).resolve() == ROOT
    dist = tmp_path_factory.mktemp("bundle") / "dist"
    command = shlex.split(artifact["build"])
    assert command[:3] == ["python", "-m", "pip"] and command[-1] == "." and "dist" in command
    command = [sys.executable, *command[1:-1], "--no-build-isolation", "-q", "."]
    command[command.index("dist")] = str(dist)
    subprocess.run(command, cwd=ROOT, check=True, timeout=300)
    (built,) = dist.glob("*.whl")  # what the tasks' ./dist/*.whl picks up
    return built


def _metadata(wheel: Path) -> tuple[Any, str, set[str]]:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        return Parser().parsestr(archive.read(info).decode()), archive.read(points).decode(), names


def test_both_jobs_run_the_wheels_entry_point_with_arguments_the_job_accepts(wheel: Path) -> None:
    metadata, entry_points, files = _metadata(wheel)
    assert set(JOBS) == {"batchscore_nightly", "batchscore_nightly_serverless"}
    for job in JOBS.values():
        (task,) = job["tasks"]
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == metadata["Name"]
        assert re.search(rf"^{wheel_task['entry_point']} = batchscore\.jobs\.cli:main$", entry_points, re.M)
        command, *job_args = _arguments(job, task)
        assert command == "score"
        parser = job_parser("batchscore score", "", ds_help="")
        args = parser.parse_args(job_args)
        # The run's date less one day: yesterday's partition, as the Airflow DAG's logical date.
        assert shifted_ds(args.ds, args.ds_offset) == "2026-12-06"
        config = Path(args.config)
        assert config.is_file(), f"the job config the bundle names is not in the repository: {config}"
        assert f"batchscore/{config.relative_to(ROOT)}" in files, "the wheel carries the job config too"
        cfg = load_job_config(config, args.overrides)
        assert cfg.spark.profile == "databricks"
        assert (cfg.model.uri, cfg.input.table, cfg.output.table) == (
            "models:/main.fraud.fraud_model@champion",
            "main.fraud.transactions",
            "main.fraud.fraud_scores",
        )
        assert (cfg.mlflow.tracking_uri, cfg.mlflow.registry_uri) == ("databricks", "databricks-uc")
        assert task["max_retries"] >= 1 and task["timeout_seconds"] > 0


def test_the_job_cluster_runs_a_runtime_the_wheel_supports(wheel: Path) -> None:
    metadata, _, _ = _metadata(wheel)
    job = JOBS["batchscore_nightly"]
    (task,) = job["tasks"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
    cluster = clusters[task["job_cluster_key"]]
    version = _resolve(cluster["spark_version"])
    runtime = re.match(r"(\d+\.\d+)\.x-", version)
    assert runtime and runtime[1] in RUNTIMES, version
    spark, python = RUNTIMES[runtime[1]]
    assert "-ml-" in version, f"{version}: the ML runtime brings torch and mlflow"
    assert python in SpecifierSet(metadata["Requires-Python"]), (python, metadata["Requires-Python"])
    assert int(spark.split(".")[0]) >= 4
    assert task["libraries"] == [{"whl": "./dist/*.whl"}]
    assert cluster["spark_env_vars"]["JE_ARROW_MALLOC_CONF"] == ARROW_JEMALLOC_CONF
    assert job["schedule"]["quartz_cron_expression"] and job["max_concurrent_runs"] >= 1


def test_the_serverless_job_names_an_environment_the_wheel_supports(wheel: Path) -> None:
    metadata, _, _ = _metadata(wheel)
    job = JOBS["batchscore_nightly_serverless"]
    (task,) = job["tasks"]
    assert "job_cluster_key" not in task and "libraries" not in task and "job_clusters" not in job
    environments = {e["environment_key"]: e["spec"] for e in job["environments"]}
    spec = environments[task["environment_key"]]
    spark, python = SERVERLESS[str(spec["environment_version"])]
    assert python in SpecifierSet(metadata["Requires-Python"]) and int(spark.split(".")[0]) >= 4
    assert "./dist/*.whl" in spec["dependencies"]


def test_the_wheel_leaves_the_runtimes_spark_alone(wheel: Path) -> None:
    """Databricks runtimes and Databricks Connect bring pyspark and Delta: the wheel must not pull the PyPI
    packages over them (they are the ``spark`` extra, for self-managed Spark)."""
    metadata, _, files = _metadata(wheel)
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    plain = {r.name for r in requirements if r.marker is None}
    assert not plain & {"pyspark", "delta-spark", "databricks-connect"}, plain
    spark_extra = {r.name for r in requirements if r.marker and "spark" in str(r.marker)}
    assert {"pyspark", "delta-spark"} <= spark_extra
    assert {"batchscore/conf/spark/databricks.yaml", "batchscore/udfs/scorer.py"} <= files


def test_ds_offset_moves_the_partition_and_needs_a_ds() -> None:
    from batchscore.jobs.errors import ConfigError

    assert shifted_ds("2026-03-01", -1) == "2026-02-28"
    assert shifted_ds(None, 0) is None
    with pytest.raises(ConfigError, match="expected --ds YYYY-MM-DD with --ds-offset -1, found no --ds"):
        shifted_ds(None, -1)
    assert dt.date.fromisoformat(shifted_ds(RUN_DATE, 0) or "") == dt.date(2026, 12, 7)
