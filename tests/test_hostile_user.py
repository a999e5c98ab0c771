"""What a hostile user tried (issue 30), each case on real Spark, Delta and MLflow: values at the edge of the
model's dtype, models that overflow, null keys, reordered feature columns, empty and missing partitions,
names refused before any work, concurrent first writes, credentials, an overloaded registry, killed runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from batchscore.jobs.demo import FEATURES
from batchscore.jobs.errors import InvalidInputError, SchemaMismatchError
from batchscore.jobs.score import run
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import (
    assert_close,
    job_config,
    partition_frame,
    reference_scores,
    register_test_model,
    with_bad_rows,
    with_sections,
)

DS = DATES[1]


def _ids(frame, rows) -> set[int]:
    return {int(frame.loc[r, "transaction_id"]) for r in rows}


def test_finite_values_beyond_float32_are_quarantined_before_the_model(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    """1e39 and -1e300 are finite doubles but infinite in the float32 the torch model computes in."""
    bad = {2: ("f3", 1e39), 9: ("f8", -1e300), 30: ("f0", 3.4e38)}  # 3.4e38 fits float32: scored
    path = with_bad_rows(spark, input_path, tmp_path, bad, DS)
    out = tmp_path / "out"
    result = run(spark, job_config(path, str(out)), DS)
    frame = partition_frame(spark, path, DS).sort_values("transaction_id").reset_index(drop=True)
    assert result.invalid_rows == 2 and result.rows_scored == ROWS_PER_DAY - 2
    quarantine = spark.read.format("delta").load(f"{out}_quarantine").toPandas()
    reasons = dict(zip(quarantine["transaction_id"], quarantine["reason"], strict=True))
    assert reasons == {
        int(frame.loc[2, "transaction_id"]): "f3: 1e+39 is beyond the model's float range (+-3.403e+38)",
        int(frame.loc[9, "transaction_id"]): "f8: -1e+300 is beyond the model's float range (+-3.403e+38)",
    }
    scored = spark.read.format("delta").load(str(out)).toPandas()
    assert scored["fraud_score"].notna().all() and np.isfinite(scored["fraud_score"]).all()
    assert _ids(frame, [30]) <= set(scored["transaction_id"])


def test_non_finite_model_outputs_are_invalid_rows_counted_against_the_limit(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import tests.rejecting_model as module

    uri = register_test_model(
        registry.tracking_uri, module.OverflowsOnLargeFirstFeature(len(FEATURES)), "overflowing"
    )
    bad = {4: ("f0", 100.0), 200: ("f0", 1000.0)}  # in float32's range; the model's exp() overflows
    path = with_bad_rows(spark, input_path, tmp_path, bad, DS)
    out = tmp_path / "out"
    result = run(spark, job_config(path, str(out), uri=uri, batch_size=64), DS)
    frame = partition_frame(spark, path, DS).sort_values("transaction_id").reset_index(drop=True)
    assert result.invalid_rows == 2 and result.rows_scored == ROWS_PER_DAY - 2
    quarantine = spark.read.format("delta").load(f"{out}_quarantine").toPandas()
    assert set(quarantine["transaction_id"]) == _ids(frame, bad)
    assert set(quarantine["reason"]) == {"model output fraud_score: NaN"}
    assert json.loads(quarantine["raw_row"].iloc[0])["f0"] in (100.0, 1000.0)
    scored = spark.read.format("delta").load(str(out)).toPandas().sort_values("transaction_id")
    valid = frame[~frame["transaction_id"].isin(_ids(frame, bad))].reset_index(drop=True)
    assert_close(scored[["fraud_score"]].to_numpy(), reference_scores(uri, valid))

    # Counted against quality.max_invalid_fraction like any invalid row; under on_invalid: fail, named.
    strict = with_sections(
        job_config(path, str(tmp_path / "strict"), uri=uri), quality={"max_invalid_fraction": 0.001}
    )
    with pytest.raises(InvalidInputError, match=r"2 of 400 input rows \(0\.50%\) are invalid"):
        run(spark, strict, DS)
    failing = with_sections(job_config(path, str(tmp_path / "fail"), uri=uri), quality={"on_invalid": "fail"})
    with pytest.raises(InvalidInputError, match=r"model output fraud_score: NaN"):
        run(spark, failing, DS)


@pytest.mark.parametrize("read_mode", ["files", "dataframe"])
def test_rows_with_null_keys_are_invalid(
    spark, registry: Registry, input_path: str, tmp_path: Path, read_mode: str
) -> None:
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(input_path).where(f"ds = '{DS}'")
    nulled = df.withColumn(
        "transaction_id",
        F.when(F.col("transaction_id") % 200 == 7, F.lit(None)).otherwise(F.col("transaction_id")),
    )
    nulled.write.format("delta").partitionBy("ds").save(str(tmp_path / "input"))
    out = tmp_path / "out"
    cfg = with_sections(job_config(str(tmp_path / "input"), str(out)), input={"read_mode": read_mode})
    result = run(spark, cfg, DS)
    assert result.invalid_rows == 2 and result.rows_scored == ROWS_PER_DAY - 2
    scored = spark.read.format("delta").load(str(out))
    assert scored.where("transaction_id IS NULL").count() == 0
    assert scored.select(F.countDistinct("transaction_id")).first()[0] == ROWS_PER_DAY - 2
    quarantine = spark.read.format("delta").load(f"{out}_quarantine").toPandas()
    assert quarantine["transaction_id"].isna().all() and set(quarantine["reason"]) == {
        "transaction_id: null key"
    }


def test_named_signature_matches_feature_columns_by_name(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    """Alphabetical order of the 16 names is fed in the signature's order; other names are refused."""
    alphabetical = sorted(FEATURES)
    assert alphabetical != list(FEATURES)
    out = tmp_path / "out"
    cfg = with_sections(job_config(input_path, str(out)), input={"feature_columns": alphabetical})
    run(spark, cfg, DS)
    scored = spark.read.format("delta").load(str(out)).toPandas().sort_values("transaction_id")
    frame = partition_frame(spark, input_path, DS).sort_values("transaction_id").reset_index(drop=True)
    assert_close(
        scored[["fraud_score"]].to_numpy(), reference_scores(f"models:/fraud/{registry.champion}", frame)
    )

    renamed = with_sections(
        job_config(input_path, str(tmp_path / "other")), input={"feature_columns": [*FEATURES[:15], "label"]}
    )
    with pytest.raises(SchemaMismatchError, match=r"missing \['f15'\], not in the signature \['label'\]"):
        run(spark, renamed, DS)
    assert not (tmp_path / "other").exists()
    assert math.isfinite(scored["fraud_score"].sum())


def _config_file(tmp_path: Path, cfg) -> str:
    import yaml

    path = tmp_path / f"{cfg.name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(exclude_none=True)))
    return str(path)


def _cli(capfd, *args: str) -> tuple[int, str]:
    """``batchscore …`` in this process (it reuses the test session's SparkSession); rc and its output."""
    from batchscore.jobs.cli import main

    capfd.readouterr()
    rc = main(list(args))
    captured = capfd.readouterr()
    return rc, captured.out + captured.err


def _empty_parquet_partition(root: Path, ds: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("transaction_id", pa.int64()), ("label", pa.int32())] + [(f, pa.float64()) for f in FEATURES]
    )
    partition = root / f"ds={ds}"
    partition.mkdir(parents=True)
    pq.write_table(schema.empty_table(), partition / "part-0.parquet")


def test_rerun_of_an_empty_partition_is_a_success_that_changes_nothing(
    spark, registry: Registry, input_path: str, tmp_path: Path, capfd
) -> None:
    """Delta makes no commit for a replace of an empty partition by no rows: the rerun still succeeds."""
    frame = partition_frame(spark, input_path, DS).drop(columns=["ds"])
    root = tmp_path / "input"
    (root / f"ds={DS}").mkdir(parents=True)
    spark.createDataFrame(frame).write.parquet(str(root / f"ds={DS}" / "data"))
    _empty_parquet_partition(root, "2026-01-05")
    out = tmp_path / "out"
    cfg = with_sections(job_config(str(root), str(out)), input={"format": "parquet"})
    config = _config_file(tmp_path, cfg)
    assert run(spark, cfg, DS).rows_scored == ROWS_PER_DAY
    for attempt in range(2):
        rc, text = _cli(capfd, "score", "--config", config, "--ds", "2026-01-05")
        assert rc == 0, text
        assert "scored 0 rows" in text and "Traceback" not in text, (attempt, text)
    written = spark.read.format("delta").load(str(out))
    assert dict(written.groupBy("ds").count().collect()) == {DS: ROWS_PER_DAY}
    # A Parquet input's ds (inferred by Spark as a date) is written as the string it is in the path.
    assert dict(written.dtypes)["ds"] == "string"


def test_parquet_input_without_the_partition_is_refused_before_any_run(
    spark, registry: Registry, tmp_path: Path, capfd
) -> None:
    from mlflow import MlflowClient

    root = tmp_path / "input"
    _empty_parquet_partition(root, "2026-01-05")
    cfg = with_sections(
        job_config(str(root), str(tmp_path / "out")),
        input={"format": "parquet"},
        mlflow={"experiment": "parquet-missing"},
    )
    rc, text = _cli(capfd, "score", "--config", _config_file(tmp_path, cfg), "--ds", "2026-01-06")
    assert rc == 2 and "Traceback" not in text, text
    assert "has no partition ds=2026-01-06; latest partitions: ['2026-01-05']" in text
    experiment = MlflowClient(registry.tracking_uri).get_experiment_by_name("parquet-missing")
    assert experiment is None or not MlflowClient(registry.tracking_uri).search_runs(
        [experiment.experiment_id]
    )
    assert not (tmp_path / "out").exists()


def _concurrently(*jobs) -> list[BaseException]:
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def call(job) -> None:
        barrier.wait()
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_two_first_runs_into_a_new_table_both_commit(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    out = str(tmp_path / "new_table")
    errors = _concurrently(*(lambda ds=ds: run(spark, job_config(input_path, out), ds) for ds in DATES[:2]))
    assert not errors, errors
    counts = dict(spark.read.format("delta").load(out).groupBy("ds").count().collect())
    assert counts == dict.fromkeys(DATES[:2], ROWS_PER_DAY)


def test_two_runs_of_one_partition_at_once_commit_or_say_so(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    """Two runs of the same ds at once: each commits (the last one's rows stand) or fails in one line
    naming the table and what to do; never a duplicate row."""
    import tests.rejecting_model as module
    from batchscore.jobs.errors import ConcurrentWriteError

    out = str(tmp_path / "out")
    run(spark, job_config(input_path, out), DS)
    # 0.2 s a model call of 64 rows: both runs are scoring when either writes.
    slow = register_test_model(registry.tracking_uri, module.SleepsEachCall(len(FEATURES), 0.2), "slow")
    cfg = job_config(input_path, out, batch_size=64, uri=slow)
    errors = _concurrently(lambda: run(spark, cfg, DS), lambda: run(spark, cfg, DS))
    assert all(isinstance(e, ConcurrentWriteError) for e in errors), errors
    for error in errors:
        assert "another job committed to partition ds=" in str(error) and "Rerun the job" in str(error)
        assert "\n" not in str(error)
    keys = spark.read.format("delta").load(out).where(f"ds = '{DS}'").select("transaction_id")
    assert keys.count() == keys.distinct().count() == ROWS_PER_DAY


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"output": {"table": "scores; DROP TABLE x", "path": None}}, "output.table: expected a table name"),
        ({"output": {"path": "INPUT"}}, "output: is the same table as input"),
        ({"quality": {"quarantine": {"path": "INPUT"}}}, "quality.quarantine: is the same table as input"),
        ({"output": {"key_columns": ["transaction id"]}}, "output.key_columns: expected column names"),
        (
            {"input": {"feature_columns": ["f0", "f1"]}},
            "input.feature_columns do not match the input signature",
        ),
        (
            {"quality": {"on_invalid": "fail"}, "model": {"uri": "OVERFLOWING"}},
            "model output fraud_score: NaN",
        ),
    ],
    ids=["table-name", "output-is-input", "quarantine-is-input", "key-column", "feature-names", "nan-fail"],
)
def test_user_errors_are_one_line_and_exit_code_2_before_any_write(  # noqa: PLR0917 (pytest fixtures)
    spark, registry: Registry, input_path: str, tmp_path: Path, capfd, change, expected
) -> None:
    from mlflow import MlflowClient

    path = input_path
    if "OVERFLOWING" in json.dumps(change):
        import tests.rejecting_model as module

        uri = register_test_model(
            registry.tracking_uri, module.OverflowsOnLargeFirstFeature(len(FEATURES)), "overflowing_cli"
        )
        path = with_bad_rows(spark, input_path, tmp_path, {4: ("f0", 100.0)}, DS)
        change = {**change, "model": {"uri": uri}}
    document = json.loads(json.dumps(change).replace('"INPUT"', json.dumps(path)))
    experiment = f"cli-errors-{tmp_path.name}"
    cfg = with_sections(
        job_config(path, str(tmp_path / "out")), mlflow={"experiment": experiment}, **document
    )
    rc, text = _cli(capfd, "score", "--config", _config_file(tmp_path, cfg), "--ds", DS)
    # main() returned (a driver traceback would have raised here): rc 2 and one error line of ours, or one
    # message listing every problem. (Spark's own log may show the worker's exception before it.)
    assert rc == 2, text
    ours = [line for line in text.splitlines() if "ERROR batchscore" in line]
    assert len(ours) == 1 and expected in text, text
    assert expected in ours[0] or "\n  - " in text, text
    for table in (
        tmp_path / "out",
        tmp_path / "out_quarantine",
    ):  # no commit (a failed write may leave files)
        assert not (table / "_delta_log").is_dir() or not list((table / "_delta_log").glob("*.json")), table
    if "table-name" in expected or "same table" in expected:  # refused before MLflow or the model is touched
        assert MlflowClient(registry.tracking_uri).get_experiment_by_name(experiment) is None


class _StubServer:
    """An HTTP server on loopback answering ``/health`` with 200 and everything else with ``status``."""

    def __init__(self, status: int) -> None:
        import http.server
        import threading

        code = status

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/health" else code)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(b"<html>busy</html>" if self.path != "/health" else b"OK")

            do_POST = do_GET  # noqa: N815 (http.server names its handlers so)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (503, r"answered HTTP 503 Service Unavailable to \d+ request\(s\) over \d+ s; it is overloaded"),
        (
            404,
            r"answered HTTP 404 Not Found to MLflow's REST API .*expected an MLflow tracking/registry server",
        ),
    ],
)
def test_an_overloaded_or_wrong_registry_fails_in_bounded_time_naming_the_http_failure(  # noqa: PLR0917
    spark, input_path: str, tmp_path: Path, capfd, status: int, expected: str
) -> None:
    import re
    import time

    stub = _StubServer(status)
    try:
        cfg = with_sections(
            job_config(input_path, str(tmp_path / "out")), mlflow={"tracking_uri": stub.uri, "timeout_s": 5}
        )
        started = time.monotonic()
        rc, text = _cli(capfd, "score", "--config", _config_file(tmp_path, cfg), "--ds", DS)
        elapsed = time.monotonic() - started
    finally:
        stub.close()
    assert rc == 2 and "Traceback" not in text, text
    assert re.search(expected, text), text
    assert "is not registered" not in text
    assert elapsed < 30, elapsed
    if status == 503:
        assert "retrying in" in text  # the wait is logged, not silent


def test_runs_left_running_by_killed_jobs_are_marked_killed_by_the_next_run(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import os
    import socket
    import subprocess
    import time

    from mlflow import MlflowClient

    from batchscore.jobs.tracking import HOST, PID, RUN_KEY, ensure_experiment

    cfg = with_sections(job_config(input_path, str(tmp_path / "out")), mlflow={"experiment": "abandoned"})
    client = MlflowClient(registry.tracking_uri)
    experiment = ensure_experiment(cfg.mlflow)
    key = f"{cfg.name}-{DS}"
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = socket.gethostname()
    old_ms = int((time.time() - 30 * 3600) * 1000)

    def running(tags: dict[str, str], start_time: int | None = None) -> str:
        return client.create_run(experiment, start_time=start_time, tags={RUN_KEY: key, **tags}).info.run_id

    killed_here = running({HOST: here, PID: str(gone.pid)})  # its process is gone
    stale_elsewhere = running({HOST: "other-node", PID: "1"}, start_time=old_ms)  # 30 h old, elsewhere
    live_here = running({HOST: here, PID: str(os.getpid())})  # a live process: left alone
    recent_elsewhere = running({HOST: "other-node", PID: "1"})  # may still be running there
    other_partition = client.create_run(
        experiment, tags={RUN_KEY: f"{cfg.name}-{DATES[0]}", HOST: here, PID: str(gone.pid)}
    ).info.run_id

    result = run(spark, cfg, DS)
    status = {r: client.get_run(r).info.status for r in (killed_here, stale_elsewhere, live_here,
                                                          recent_elsewhere, other_partition)}  # fmt: skip
    assert status == {
        killed_here: "KILLED",
        stale_elsewhere: "KILLED",
        live_here: "RUNNING",
        recent_elsewhere: "RUNNING",
        other_partition: "RUNNING",
    }
    assert client.get_run(result.job_run_id).info.status == "FINISHED"
    assert client.get_run(result.job_run_id).data.tags[RUN_KEY] == key


@pytest.mark.slow
def test_credentials_in_the_tracking_uri_never_reach_stdout_or_stderr(
    spark, registry: Registry, input_path: str, tmp_path: Path, mlflow_server: int
) -> None:
    """A real job process against a real MLflow server whose URI carries a password, given through
    ${ENV} in the config: neither MLflow's own links nor our lines show it."""
    import os
    import subprocess
    import sys

    secret = "s3cret-Pw-4411"
    cfg = with_sections(
        job_config(input_path, str(tmp_path / "out")),
        mlflow={"tracking_uri": "http://scorer:${SCORING_MLFLOW_PASSWORD}@127.0.0.1:" + str(mlflow_server)},
    )
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("batchscore")), "score", "--config", _config_file(tmp_path, cfg),
         "--ds", DS],
        env={**os.environ, "SCORING_MLFLOW_PASSWORD": secret},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"scored {ROWS_PER_DAY} rows" in proc.stdout
    assert secret not in proc.stdout and secret not in proc.stderr
    assert "View run" not in proc.stdout  # MLflow's own link line, which carried the password
    assert f"http://127.0.0.1:{mlflow_server}/#/experiments/" in proc.stderr  # ours, without it


def test_an_existing_output_with_other_columns_is_refused_in_one_line(
    spark, registry: Registry, input_path: str, tmp_path: Path, capfd
) -> None:
    from delta.tables import DeltaTable

    out = str(tmp_path / "out")
    spark.createDataFrame([("a", 1, DS)], "transaction_id string, other int, ds string").write.format(
        "delta"
    ).partitionBy("ds").save(out)
    cfg = with_sections(job_config(input_path, out), quality={"on_invalid": "fail"})
    rc, text = _cli(capfd, "score", "--config", _config_file(tmp_path, cfg), "--ds", DS)
    assert rc == 2, text
    ours = [line for line in text.splitlines() if "ERROR batchscore" in line]
    assert len(ours) == 1 and "does not take this run's columns, nothing was committed" in ours[0], text
    assert DeltaTable.forPath(spark, out).history().count() == 1
