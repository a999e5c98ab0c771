"""The job through real spark-submit (a separate driver JVM and Python), read back from Delta."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from batchscore.jobs.launcher import LAUNCHER
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, reference_scores

ROOT = Path(__file__).resolve().parent.parent
BATCHSCORE = str(Path(sys.executable).parent / "batchscore")


def _job_yaml(tmp_path: Path, input_path: str, output_path: str) -> Path:
    path = tmp_path / "job.yaml"
    config = yaml.safe_load((ROOT / "conf" / "jobs" / "fraud_nightly.yaml").read_text())
    config["input"]["path"] = input_path
    config["output"]["path"] = output_path
    config["spark"]["conf"] = {"spark.master": "local[2]", "spark.ui.enabled": "false"}
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_spark_submit_scores_a_partition(spark, registry: Registry, input_path: str, tmp_path: Path) -> None:
    output = str(tmp_path / "fraud_scores")
    config = _job_yaml(tmp_path, input_path, output)
    proc = subprocess.run(
        [BATCHSCORE, "submit", "score", "--config", str(config), "--ds", DATES[2]],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (
        f"scored {ROWS_PER_DAY} rows with models:/fraud@champion (version {registry.champion})" in proc.stdout
    )
    assert "INFO DAGScheduler" not in proc.stderr, "Spark's INFO logging should be quieted under submit"

    written = spark.read.format("delta").load(output).toPandas().sort_values("transaction_id")
    source = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[2]}'").toPandas()
    source = source.sort_values("transaction_id")
    assert written["transaction_id"].tolist() == source["transaction_id"].tolist()
    assert set(written["ds"]) == {DATES[2]}
    assert set(written["model_version"]) == {registry.champion}
    assert written["job_run_id"].nunique() == 1
    assert_close(
        written[["fraud_score"]].to_numpy(), reference_scores(f"models:/fraud/{registry.champion}", source)
    )


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nmodel: {uri: 'models:/fraud@champion', batchsize: 3}\n")
    proc = subprocess.run(
        [BATCHSCORE, "score", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "model.batchsize: unknown key" in proc.stderr
    assert "input: required key is missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plain_spark_submit_without_jars_explains_the_fix(home: Path, tmp_path: Path) -> None:
    from pyspark.find_spark_home import _find_spark_home

    config = _job_yaml(tmp_path, str(tmp_path / "in"), str(tmp_path / "out"))
    env = dict(os.environ, SPARK_HOME=_find_spark_home(), PYSPARK_PYTHON=sys.executable)
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    proc = subprocess.run(
        [
            str(Path(_find_spark_home()) / "bin" / "spark-submit"),
            str(LAUNCHER),
            "score",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    # Spark's PythonRunner merges the Python driver's stderr into spark-submit's stdout.
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Delta Lake classes are not on the driver's classpath" in output
    assert "--jars $(batchscore jars)" in output


@pytest.mark.slow
def test_spark_submit_runs_the_shadow_job(spark, registry: Registry, input_path: str, tmp_path: Path) -> None:
    import json

    config = yaml.safe_load((ROOT / "conf" / "jobs" / "fraud_shadow.yaml").read_text())
    config["input"]["path"] = input_path
    for section, name in ((config["output"], "scores"), (config["shadow"]["output"], "shadow"),
                          (config["shadow"]["comparison"], "comparison")):  # fmt: skip
        section["path"] = str(tmp_path / name)
    config["spark"]["conf"] = {"spark.master": "local[2]", "spark.ui.enabled": "false"}
    path = tmp_path / "shadow.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [BATCHSCORE, "submit", "shadow", "--config", str(path), "--ds", DATES[0]],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["verdict"] in ("pass", "fail") and Path(summary["report"]).is_file()
    row = spark.read.format("delta").load(str(tmp_path / "comparison")).collect()[0]
    assert row["verdict"] == summary["verdict"] and row["rows"] == ROWS_PER_DAY
    assert row["champion_version"] == registry.champion and row["challenger_version"] == registry.challenger
