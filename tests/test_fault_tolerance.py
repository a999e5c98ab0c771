"""Faults in real processes: a task whose first attempt fails, and a job killed with SIGKILL mid-write.

Both run the job through ``batchscore submit`` (spark-submit: its own driver JVM, Python driver and
workers) with a fault injected by ``tests/faults/sitecustomize.py`` (:func:`_with_fault`), and read the
result back from Delta here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from delta.tables import DeltaTable

from batchscore.jobs.score import run
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import job_config

ROOT = Path(__file__).resolve().parent.parent
BATCHSCORE = str(Path(sys.executable).parent / "batchscore")
DS = DATES[1]


def _job_yaml(tmp_path: Path, input_path: str, output_path: str, **model: object) -> Path:
    path = tmp_path / "job.yaml"
    config = yaml.safe_load((ROOT / "conf" / "jobs" / "fraud_nightly.yaml").read_text())
    config["input"]["path"] = input_path
    config["output"]["path"] = output_path
    config["model"].update(model)
    # Up to 4 attempts per task, as on a cluster; 2 cores.
    config["spark"]["conf"] = {"spark.master": "local[2,4]", "spark.ui.enabled": "false"}
    path.write_text(yaml.safe_dump(config))
    return path


def _with_fault(fault: str) -> dict[str, str]:
    """A job process's environment with ``fault`` injected into its scoring loops (tests/faults)."""
    path = os.pathsep.join(p for p in (str(ROOT / "tests" / "faults"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "BATCHSCORE_FAULT": fault}


def _submit_with_fault(config: Path, fault: str) -> subprocess.CompletedProcess[str]:
    """``batchscore submit score`` of ``config`` for :data:`DS` with ``fault`` injected."""
    return subprocess.run(
        [BATCHSCORE, "submit", "score", "--config", str(config), "--ds", DS],
        capture_output=True,
        text=True,
        timeout=600,
        env=_with_fault(fault),
        check=False,
    )


def _keys(spark, path: str, ds: str) -> list[int]:
    rows = spark.read.format("delta").load(path).where(f"ds = '{ds}'").select("transaction_id").collect()
    return sorted(r[0] for r in rows)


@pytest.mark.slow
def test_a_task_failing_its_first_attempt_is_retried_without_duplicates_or_gaps(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    output = str(tmp_path / "scores")
    config = _job_yaml(tmp_path, input_path, output, batch_size=50)
    proc = _submit_with_fault(config, "fail_first_attempt")
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = proc.stdout + proc.stderr
    assert "BATCHSCORE_ERROR[injected_fault]" in logs, "the first attempt of partition 0 must have failed"
    written = _keys(spark, output, DS)
    assert written == _keys(spark, input_path, DS), "exactly the input's keys: no duplicates, no gaps"
    assert len(written) == ROWS_PER_DAY


@pytest.mark.slow
def test_a_worker_killed_on_every_attempt_fails_the_job_in_one_line_and_writes_nothing(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    output = tmp_path / "scores"
    config = _job_yaml(tmp_path, input_path, str(output), batch_size=50)
    settings = yaml.safe_load(config.read_text())
    settings["spark"]["conf"]["spark.master"] = "local[2,2]"  # two attempts, both killed
    config.write_text(yaml.safe_dump(settings))
    proc = _submit_with_fault(config, "kill_worker")
    logs = proc.stdout + proc.stderr
    errors = [line for line in logs.splitlines() if "ERROR batchscore" in line]
    assert proc.returncode == 2, logs[-4000:]
    assert len(errors) == 1, errors
    assert "a Python worker died while scoring" in errors[0], errors
    assert "model.batch_size" in errors[0], "the line says what to change"
    assert "Traceback" not in logs
    assert not (output / "_delta_log").exists(), "nothing written"


def test_a_databricks_memory_limit_error_is_one_line_naming_the_limit() -> None:
    """Databricks' own error for a UDF over its memory limit (its documented message; the platform is
    not reachable from here), as a task failure would carry it."""
    from batchscore.jobs.errors import ExecutorError
    from batchscore.jobs.scoring import executor_errors

    failure = (
        "Job aborted due to stage failure: Task 3 in stage 7.0 failed 4 times ... "
        "[UDF_PYSPARK_USER_CODE_ERROR.MEMORY_LIMIT_SERVERLESS] Function exceeded the limit of 1024 "
        "megabytes. Please reduce the memory usage of your function. SQLSTATE: 39000"
    )
    expected = r"memory limit for a UDF \(1024 MB\): lower model.batch_size"
    with pytest.raises(ExecutorError, match=expected), executor_errors():
        raise RuntimeError(failure)


@pytest.mark.slow
def test_kill_9_mid_write_leaves_the_previous_version_and_a_rerun_completes(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    output = tmp_path / "scores"
    first = run(spark, job_config(input_path, str(output)), DS)
    version = DeltaTable.forPath(spark, str(output)).history(1).collect()[0]["version"]
    partition = output / f"ds={DS}"
    files_before = set(partition.glob("*.parquet"))

    # Slow batches (0.3 s per 20 rows) and on_invalid: fail, so the scoring happens inside the write.
    config = _job_yaml(tmp_path, input_path, str(output), batch_size=20)
    proc = subprocess.Popen(
        [
            BATCHSCORE,
            "submit",
            "score",
            "--config",
            str(config),
            "--ds",
            DS,
            "--set",
            "quality.on_invalid=fail",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_with_fault("slow:0.3"),
        start_new_session=True,  # one process group: spark-submit, its JVM, the Python driver and workers
    )
    deadline = time.monotonic() + 300
    try:
        while not (set(partition.glob("*.parquet")) - files_before):
            assert proc.poll() is None, "the job ended before it started writing"
            assert time.monotonic() < deadline, "the job never started writing"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-write: data files exist, no commit yet
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    history = DeltaTable.forPath(spark, str(output)).history(1).collect()[0]
    assert history["version"] == version, "the killed job committed nothing"
    rows = spark.read.format("delta").load(str(output)).where(f"ds = '{DS}'").toPandas()
    assert len(rows) == ROWS_PER_DAY and set(rows["job_run_id"]) == {first.job_run_id}

    again = run(spark, job_config(input_path, str(output)), DS)
    assert again.rows_scored == ROWS_PER_DAY
    assert _keys(spark, str(output), DS) == _keys(spark, input_path, DS)
    assert DeltaTable.forPath(spark, str(output)).history(1).collect()[0]["version"] == version + 1
