"""The jobs and the notebook API over Spark Connect, against the same jobs on a classic session.

A real Spark Connect server (``connect_url``, its own JVM with Delta) runs every Connect side; each job runs
as a real ``batchscore`` process with ``SPARK_REMOTE`` set, as a user would run it, and its tables are read
back here through the classic session and compared with a classic run of the same config.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from batchscore.jobs.config import ScoringJobConfig
from batchscore.jobs.score import run as score_classic
from batchscore.jobs.shadow import run as shadow_classic
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import job_config, with_bad_rows, with_sections

pytestmark = pytest.mark.slow
BATCHSCORE = str(Path(sys.executable).parent / "batchscore")
DS = DATES[1]


def _over_connect(connect_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``batchscore …`` in its own process, with ``SPARK_REMOTE`` pointing at the test server."""
    return subprocess.run(
        [BATCHSCORE, *args],
        env={**os.environ, "SPARK_REMOTE": connect_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _config(tmp_path: Path, cfg: ScoringJobConfig, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(exclude_none=True)))
    return str(path)


def _job_run(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    found = re.search(r"job run ([0-9a-f]{32})", proc.stdout)
    assert found, proc.stdout
    return found.group(1)


def _rows(spark: Any, path: str, *columns: str) -> list[tuple[Any, ...]]:
    table = spark.read.format("delta").load(path).where(f"ds = '{DS}'")
    return sorted(tuple(r) for r in table.select(*columns).collect())


def test_score_over_connect_writes_what_classic_writes_and_reruns_replace_one_partition(
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str
) -> None:
    from delta.tables import DeltaTable
    from mlflow import MlflowClient

    classic_out, connect_out = str(tmp_path / "classic"), str(tmp_path / "connect")
    score_classic(spark, job_config(input_path, classic_out), DS)
    config = _config(tmp_path, job_config(input_path, connect_out), "score")
    first = _job_run(_over_connect(connect_url, tmp_path, "score", "--config", config, "--ds", DS))
    columns = ("transaction_id", "label", "fraud_score", "model_version")
    assert _rows(spark, connect_out, *columns) == _rows(spark, classic_out, *columns)
    again = _over_connect(connect_url, tmp_path, "score", "--config", config, "--ds", DS)
    second = _job_run(again)
    assert "connected to Spark Connect server" in again.stderr
    table = spark.read.format("delta").load(connect_out).where(f"ds = '{DS}'")
    assert table.count() == ROWS_PER_DAY and {
        r[0] for r in table.select("job_run_id").distinct().collect()
    } == {second}
    history = DeltaTable.forPath(spark, connect_out).history().collect()
    assert len(history) == 2 and history[0]["userMetadata"] == second and first != second
    # The workers' runtime stats reach the run over Connect too (observed with the rows, no accumulator).
    metrics = MlflowClient(registry.tracking_uri).get_run(second).data.metrics
    assert metrics["rows_scored"] == ROWS_PER_DAY and metrics["rows_through_models"] == ROWS_PER_DAY
    assert metrics["scoring_tasks"] >= 1 and metrics["model_batches"] >= 1
    assert 0 < metrics["batch_latency_p50_ms"] <= metrics["batch_latency_p99_ms"]
    assert metrics["compute_total_s"] > 0 and metrics["model_loads"] <= metrics["scoring_workers"]


def test_executor_model_server_over_connect_scores_what_worker_mode_scores(
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str
) -> None:
    from mlflow import MlflowClient

    classic_out, connect_out = str(tmp_path / "classic"), str(tmp_path / "connect")
    score_classic(spark, job_config(input_path, classic_out), DS)
    cfg = job_config(input_path, connect_out, sharing="executor", batch_size=32)
    run = _job_run(
        _over_connect(connect_url, tmp_path, "score", "--config", _config(tmp_path, cfg, "s"), "--ds", DS)
    )
    columns = ("transaction_id", "fraud_score")
    ours, theirs = _rows(spark, connect_out, *columns), _rows(spark, classic_out, *columns)
    assert [r[0] for r in ours] == [r[0] for r in theirs]
    np.testing.assert_allclose([r[1] for r in ours], [r[1] for r in theirs], rtol=1e-5)
    metrics = MlflowClient(registry.tracking_uri).get_run(run).data.metrics
    assert metrics["model_servers"] == 1 and metrics["model_copies_per_executor_device"] == 1
    assert metrics["server_requests"] >= ROWS_PER_DAY // 32 and metrics["model_loads"] == 0


def test_quarantine_and_canary_over_connect_match_classic(
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str
) -> None:
    bad = with_bad_rows(spark, input_path, tmp_path, {3: ("f2", float("nan")), 7: ("f5", None)}, DS)
    canary = {"challenger_uri": "models:/fraud@challenger", "fraction": 0.3}
    classic = with_sections(job_config(bad, str(tmp_path / "classic")), canary=canary)
    over_connect = with_sections(job_config(bad, str(tmp_path / "connect")), canary=canary)
    score_classic(spark, classic, DS)
    config = _config(tmp_path, over_connect, "canary")
    proc = _over_connect(connect_url, tmp_path, "score", "--config", config, "--ds", DS)
    _job_run(proc)
    # quality.hold: auto stages over Connect (no persist()), and removes the staging table at the end.
    assert "staging the scored rows in path " + str(tmp_path / "connect_staging") in proc.stderr
    assert not (tmp_path / "connect_staging").exists()
    columns = ("transaction_id", "fraud_score", "variant", "model_version")
    written = _rows(spark, str(tmp_path / "connect"), *columns)
    assert written == _rows(spark, str(tmp_path / "classic"), *columns)
    assert len(written) == ROWS_PER_DAY - 2 and {r[2] for r in written} == {"champion", "challenger"}
    quarantined = ("transaction_id", "reason")
    assert _rows(spark, str(tmp_path / "connect_quarantine"), *quarantined) == _rows(
        spark, str(tmp_path / "classic_quarantine"), *quarantined
    )


def _shadow(input_path: str, tmp_path: Path, name: str, model: str, **shadow: Any) -> ScoringJobConfig:
    cfg = job_config(input_path, str(tmp_path / name / "scores"))
    cfg = with_sections(cfg, model={"uri": f"models:/{model}@champion"})
    section = {
        "challenger_uri": f"models:/{model}@challenger",
        "output": {"path": str(tmp_path / name / "shadow")},
        "comparison": {"path": str(tmp_path / name / "comparison")},
        "label_column": "label",
        **shadow,
    }
    return ScoringJobConfig.model_validate({**cfg.model_dump(), "shadow": section})


def test_shadow_and_promote_over_connect(  # noqa: PLR0917 (pytest fixtures)
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str, promo: str
) -> None:
    from mlflow import MlflowClient

    classic = shadow_classic(spark, _shadow(input_path, tmp_path, "classic", promo, thresholds={}), DS)
    config = _config(tmp_path, _shadow(input_path, tmp_path, "connect", promo, thresholds={}), "shadow")
    proc = _over_connect(connect_url, tmp_path, "shadow", "--config", config, "--ds", DS)
    _job_run(proc)
    verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    assert verdict["verdict"] == classic.verdict == "pass"
    row = spark.read.format("delta").load(str(tmp_path / "connect" / "comparison")).collect()
    assert len(row) == 1 and row[0]["rows_scored"] == ROWS_PER_DAY
    for metric in ("psi", "ks", "pearson", "spearman", "auc_delta", "mean_abs_delta"):
        assert row[0][metric] == pytest.approx(classic.comparison.metrics[metric], rel=1e-9, abs=1e-12)
    assert _rows(spark, str(tmp_path / "connect" / "shadow"), "transaction_id", "fraud_score") == _rows(
        spark, str(tmp_path / "classic" / "shadow"), "transaction_id", "fraud_score"
    )
    client = MlflowClient(registry.tracking_uri)
    challenger = str(client.get_model_version_by_alias(promo, "challenger").version)
    promoted = _over_connect(connect_url, tmp_path, "promote", "--config", config)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert str(client.get_model_version_by_alias(promo, "champion").version) == challenger


def test_a_shadow_run_that_fails_over_connect_writes_nothing(  # noqa: PLR0917 (pytest fixtures)
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str, promo: str
) -> None:
    bad = with_bad_rows(spark, input_path, tmp_path, {i: ("f1", float("inf")) for i in range(40)}, DS)
    config = _config(tmp_path, _shadow(bad, tmp_path, "failing", promo), "failing")
    proc = _over_connect(connect_url, tmp_path, "shadow", "--config", config, "--ds", DS)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "40 of 400 input rows (10.00%) are invalid" in last and "Traceback" not in proc.stderr
    # No output, shadow, comparison or quarantine table, and the run's staging table is gone too.
    assert not list((tmp_path / "failing").rglob("_delta_log")), list((tmp_path / "failing").rglob("*"))


NOTEBOOK = """
import json, sys
from pyspark.sql import SparkSession
from batchscore.jobs.api import compare, score
spark = SparkSession.builder.remote(sys.argv[1]).getOrCreate()
df = spark.read.format("delta").load(sys.argv[2]).where("ds = '%s'")
scored = score(df, "models:/fraud@champion", prediction_column="fraud_score")
rows = sorted([r[0], r[1]] for r in scored.select("transaction_id", "fraud_score").collect())
result = compare(df, "models:/fraud@champion", "models:/fraud@challenger", label_column="label")
print(json.dumps({"rows": rows, "psi": result.metrics["psi"], "verdict": result.verdict,
                  "figures": sorted(result.figures)}))
"""


def test_notebook_api_over_connect_matches_classic(
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str
) -> None:
    from batchscore.jobs.api import compare, score

    proc = subprocess.run(
        [sys.executable, "-c", NOTEBOOK % DS, connect_url, input_path],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    df = spark.read.format("delta").load(input_path).where(f"ds = '{DS}'")
    classic = score(df, "models:/fraud@champion", prediction_column="fraud_score")
    expected = sorted([r[0], r[1]] for r in classic.select("transaction_id", "fraud_score").collect())
    assert found["rows"] == expected
    result = compare(df, "models:/fraud@champion", "models:/fraud@challenger", label_column="label")
    assert found["psi"] == pytest.approx(result.metrics["psi"]) and found["verdict"] == result.verdict
    assert found["figures"] == sorted(result.figures)


def test_the_databricks_notebook_runs_over_connect(
    spark, registry: Registry, input_path: str, tmp_path: Path, connect_url: str
) -> None:
    """Databricks serverless and standard access mode give notebooks a Connect session only."""
    output = tmp_path / "scores"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent.parent / "notebooks" / "batch_scoring_databricks.py")],
        env={**os.environ, "SPARK_REMOTE": connect_url, "BATCHSCORE_INPUT_PATH": input_path,
             "BATCHSCORE_OUTPUT_PATH": str(output), "BATCHSCORE_DS": DS},
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"wrote {ROWS_PER_DAY} rows for ds={DS}" in proc.stdout
    assert "session: Spark Connect" in proc.stdout
    written = spark.read.format("delta").load(str(output)).select("transaction_id", "model_version").collect()
    assert len(written) == ROWS_PER_DAY and {r[1] for r in written} == {registry.champion}
