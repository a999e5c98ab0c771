"""The Airflow DAGs, parsed by a real DagBag and run with `airflow dags test` (real spark-submit inside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import DATES, ROWS_PER_DAY, Registry

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _airflow_env(tmp: Path, conf_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp / 'airflow' / 'airflow.db'}",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "BATCHSCORE_AIRFLOW_CONF": str(conf_dir),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _conf_dir(tmp: Path, job: dict, **dag: object) -> Path:
    """A conf/airflow folder whose DAG configs point at ``job`` (written beside it)."""
    conf = tmp / "conf_airflow"
    conf.mkdir(exist_ok=True)
    job_path = tmp / "job.yaml"
    job_path.write_text(yaml.safe_dump(job))
    for name in ("nightly_scoring", "shadow_comparison"):
        document = yaml.safe_load((ROOT / "conf" / "airflow" / f"{name}.yaml").read_text())
        document.update(job_config=str(job_path), **dag)
        (conf / f"{name}.yaml").write_text(yaml.safe_dump(document))
    return conf


def _job(input_path: str, tmp: Path, model: str = "fraud") -> dict:
    job = yaml.safe_load((ROOT / "conf" / "jobs" / "fraud_shadow.yaml").read_text())
    job["model"]["uri"] = f"models:/{model}@champion"
    job["input"]["path"] = input_path
    job["output"]["path"] = str(tmp / "scores")
    job["shadow"]["challenger_uri"] = f"models:/{model}@challenger"
    job["shadow"]["output"]["path"] = str(tmp / "shadow_scores")
    job["shadow"]["comparison"]["path"] = str(tmp / "comparison")
    job["spark"]["conf"] = {"spark.ui.enabled": "false"}
    return job


def _dags_test(env: dict[str, str], dag_id: str, ds: str) -> str:
    migrate = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    proc = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id, ds],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-5000:]
    assert "state=success" in logs, logs[-5000:]
    return logs


PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "owner": dag.default_args.get("owner"), "retries": dag.default_args.get("retries"),
        "catchup": dag.catchup, "max_active_runs": dag.max_active_runs, "tags": sorted(dag.tags),
        "tasks": {t.task_id: type(t).__name__ for t in dag.tasks},
        "score_json": getattr(dag.task_dict.get("score"), "json", None),
    }
print(json.dumps({
    "errors": {k: str(v)[:500] for k, v in bag.import_errors.items()},
    "dags": dags, "pyspark": "pyspark" in sys.modules,
    "file_seconds": {str(s.file): getattr(s.duration, "total_seconds", lambda: s.duration)()
                     for s in bag.dagbag_stats},
}, default=str))
"""


def _parse(env: dict[str, str]) -> dict:
    """DagBag over airflow_dags/ in a fresh interpreter; what it found, as JSON."""
    proc = subprocess.run(
        [sys.executable, "-c", PARSE, str(ROOT / "airflow_dags")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_dags_parse_without_a_database_or_spark(tmp_path: Path, input_path: str) -> None:
    conf = _conf_dir(tmp_path, _job(input_path, tmp_path))
    env = _airflow_env(tmp_path, conf)
    # A database URL that cannot work: any query during parsing would fail the import.
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "sqlite:////nonexistent-dir/nothing.db"
    result = _parse(env)
    assert result["errors"] == {}
    assert not result["pyspark"], "parsing must not import (let alone start) Spark"
    assert all(seconds < 2.0 for seconds in result["file_seconds"].values()), result["file_seconds"]
    nightly = result["dags"]["batchscore_nightly_scoring"]
    assert nightly["owner"] == "ml-platform" and nightly["retries"] == 3 and nightly["catchup"] is False
    assert nightly["max_active_runs"] == 3 and "batchscore" in nightly["tags"]
    assert nightly["tasks"] == {
        "wait_for_input": "PythonSensor",
        "score": "SparkSubmitOperator",
        "check_row_counts": "_PythonDecoratedOperator",
    }
    shadow = result["dags"]["batchscore_shadow_comparison"]
    assert shadow["tasks"]["promote"] == "BashOperator" and shadow["tasks"]["shadow"] == "SparkSubmitOperator"

    # The Databricks variant of the submit step, selected by config.
    databricks = {
        "python_file": "/Workspace/batchscore/jobs/launcher/batchscore_job.py",
        "job_config": "/Workspace/fraud.yaml",
        "existing_cluster_id": "0101-abc",
    }
    conf = _conf_dir(tmp_path, _job(input_path, tmp_path), backend="databricks", databricks=databricks)
    env["BATCHSCORE_AIRFLOW_CONF"] = str(conf)
    result = _parse(env)
    assert result["errors"] == {}
    nightly = result["dags"]["batchscore_nightly_scoring"]
    assert nightly["tasks"]["score"] == "DatabricksSubmitRunOperator"
    task = (
        json.loads(json.dumps(nightly["score_json"]))
        if isinstance(nightly["score_json"], dict)
        else nightly["score_json"]
    )
    assert "spark_python_task" in str(task) and "0101-abc" in str(task) and "{{ ds }}" in str(task)


@pytest.mark.slow
def test_nightly_dag_waits_scores_and_checks_for_real(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    env = _airflow_env(tmp_path, _conf_dir(tmp_path, _job(input_path, tmp_path)))
    logs = _dags_test(env, "batchscore_nightly_scoring", DATES[1])
    assert f"'rows_in': {ROWS_PER_DAY}, 'rows_out': {ROWS_PER_DAY}, 'rows_quarantined': 0" in logs
    written = spark.read.format("delta").load(str(tmp_path / "scores")).where(f"ds = '{DATES[1]}'")
    source = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[1]}'")
    assert sorted(r[0] for r in written.select("transaction_id").collect()) == sorted(
        r[0] for r in source.select("transaction_id").collect()
    )
    assert {r[0] for r in written.select("model_version").distinct().collect()} == {registry.champion}


@pytest.mark.slow
def test_shadow_dag_promotes_on_a_pass_and_records_on_a_fail(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(registry.tracking_uri)
    name = f"dag_{uuid.uuid4().hex[:6]}"  # its own model: the session's 'fraud' aliases stay as they are
    client.create_registered_model(name)
    versions = []
    for source in (registry.champion, registry.challenger):
        original = client.get_model_version("fraud", source)
        versions.append(str(client.create_model_version(name, original.source, original.run_id).version))
    client.set_registered_model_alias(name, "champion", versions[0])
    client.set_registered_model_alias(name, "challenger", versions[1])

    failing = _job(input_path, tmp_path, name)
    failing["shadow"]["thresholds"] = {"min_spearman": 0.9999}
    env = _airflow_env(tmp_path, _conf_dir(tmp_path, failing, auto_promote=True))
    logs = _dags_test(env, "batchscore_shadow_comparison", DATES[0])
    assert "Following branch {'record_verdict'}" in logs and "not promoted: verdict fail" in logs
    assert str(client.get_model_version_by_alias(name, "champion").version) == versions[0]

    passing = _job(input_path, tmp_path, name)
    passing["shadow"]["thresholds"] = {"max_psi": 10.0}
    env = _airflow_env(tmp_path, _conf_dir(tmp_path, passing, auto_promote=True))
    logs = _dags_test(env, "batchscore_shadow_comparison", DATES[1])
    assert "Following branch {'promote'}" in logs
    assert str(client.get_model_version_by_alias(name, "champion").version) == versions[1]
