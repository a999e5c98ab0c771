"""What the Airflow DAGs in ``airflow_dags/`` need, kept out of the DAG files so that they parse fast.

DAG configs live in ``conf/airflow/<dag>.yaml`` (``$BATCHSCORE_AIRFLOW_CONF`` names another folder): schedule,
owner, retries, timeouts, connection ids, the job config to run and the backend (``spark`` through
``SparkSubmitOperator``, or ``databricks`` through ``DatabricksSubmitRunOperator``). Nothing here touches a
database or starts Spark at import or parse time; the sensor and the checks read Delta logs with pyarrow.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from batchscore.jobs.config import StrictModel, load_job_config, load_spark_profile
from batchscore.jobs.errors import ConfigError, InvalidInputError
from batchscore.jobs.home import packaged_conf, resolve_location

log = logging.getLogger("batchscore.scheduling")


class SensorSection(StrictModel):
    """The nightly DAG's wait for the input's partition."""

    poke_interval_s: int = Field(300, description="seconds between looks at the input's Delta log")
    timeout_s: int = Field(6 * 3600, description="seconds to wait for the partition before the run fails")
    mode: Literal["reschedule", "poke"] = Field(
        "reschedule", description="reschedule frees the worker slot between looks"
    )


class SubmitSection(StrictModel):
    """Retries and timeout of the scoring and shadow tasks."""

    retries: int = Field(3, description="task retries, with exponential back-off")
    retry_delay_s: int = Field(300, description="seconds before the first retry")
    max_retry_delay_s: int = Field(3600, description="the longest delay between retries")
    execution_timeout_s: int = Field(4 * 3600, description="seconds a task may run")


class DatabricksSection(StrictModel):
    """The submit step on Databricks (backend: databricks)."""

    python_file: str = Field(
        description="jobs/launcher/batchscore_job.py as Databricks sees it, e.g. a workspace file"
    )
    job_config: str = Field(description="the job config path as Databricks sees it")
    existing_cluster_id: str | None = Field(None, description="run on this cluster (else new_cluster)")
    new_cluster: dict[str, Any] | None = Field(
        None, description="a job cluster spec, as Databricks' API takes it"
    )
    libraries: list[dict[str, Any]] = Field(
        default_factory=list, description="libraries to install, e.g. the batchscore wheel"
    )


class DagConfig(StrictModel):
    """One DAG of ``airflow_dags/``."""

    dag_id: str = Field(description="the DAG's id")
    schedule: str | None = Field("0 3 * * *", description="cron expression or preset (null: manual only)")
    start_date: dt.date = Field(description="the first logical date")
    catchup: bool = Field(False, description="run the intervals since start_date that have not run")
    max_active_runs: int = Field(3, ge=1, description="bounds a backfill's concurrency")
    owner: str = Field("ml-platform", description="the tasks' owner")
    tags: list[str] = Field(default_factory=lambda: ["batchscore"], description="the DAG's tags")
    dagrun_timeout_s: int = Field(8 * 3600, description="seconds a whole DAG run may take")
    job_config: str = Field(description="job YAML, relative to the repository root or absolute")
    backend: Literal["spark", "databricks"] = Field(
        "spark", description="spark: SparkSubmitOperator; databricks: DatabricksSubmitRunOperator"
    )
    spark_conn_id: str = Field("spark_default", description="Airflow connection of the Spark master")
    databricks_conn_id: str = Field("databricks_default", description="Airflow connection of the workspace")
    databricks: DatabricksSection | None = Field(None, description="required with backend: databricks")
    sensor: SensorSection = Field(default_factory=SensorSection)
    submit: SubmitSection = Field(default_factory=SubmitSection)
    auto_promote: bool = Field(False, description="shadow DAG: promote the challenger on a passing verdict")

    def job_config_path(self) -> str:
        path = Path(os.path.expandvars(self.job_config))
        # Relative to the folder that holds conf/ (the repository, or the installed package).
        return str(path if path.is_absolute() else packaged_conf().parent / path)

    def dag_kwargs(self, description: str) -> dict[str, Any]:
        """``DAG(...)`` arguments from this config: schedule, dates, concurrency, timeouts, owner, tags."""
        return {
            "dag_id": self.dag_id,
            "description": description,
            "schedule": self.schedule,
            "start_date": dt.datetime.combine(self.start_date, dt.time(), tzinfo=dt.timezone.utc),
            "catchup": self.catchup,
            "max_active_runs": self.max_active_runs,
            "dagrun_timeout": dt.timedelta(seconds=self.dagrun_timeout_s),
            "default_args": self.default_args(),
            "tags": self.tags,
        }

    def default_args(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "retries": self.submit.retries,
            "retry_delay": dt.timedelta(seconds=self.submit.retry_delay_s),
            "retry_exponential_backoff": True,
            "max_retry_delay": dt.timedelta(seconds=self.submit.max_retry_delay_s),
        }


def airflow_conf_dir() -> Path:
    return Path(os.environ.get("BATCHSCORE_AIRFLOW_CONF") or packaged_conf() / "airflow")


def load_dag_config(name: str) -> DagConfig:
    path = airflow_conf_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"expected the DAG config {path}, found no such file")
    try:
        return DagConfig.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid DAG config: {exc}") from None


def spark_submit_kwargs(job: str, job_config: str, *job_args: str) -> dict[str, Any]:
    """Arguments of ``SparkSubmitOperator`` running ``batchscore <job>`` as ``batchscore submit`` does:
    Delta's cached jars, the profile's and the job's Spark conf, quiet log4j, this Python for the workers."""
    from batchscore.jobs.jars import cached_delta_jars
    from batchscore.jobs.launcher import LAUNCHER
    from batchscore.jobs.session import DELTA_CONF, with_driver_java_options
    from batchscore.jobs.submit import log4j_conf

    cfg = load_job_config(job_config)
    profile = load_spark_profile(cfg.spark.profile)
    conf = with_driver_java_options(
        {**profile.conf, **cfg.spark.conf}, f"-Dlog4j2.configurationFile={log4j_conf().as_uri()}"
    )
    conf.pop("spark.master", None)  # the Spark connection says where to run
    jars = ""
    if profile.delta:
        conf.update(DELTA_CONF)
        try:
            jars = ",".join(cached_delta_jars())
        except Exception:  # not set up on this machine yet: the job itself then says how to fix it
            log.warning("Delta jars are not cached here; run `batchscore setup` on the Airflow workers")
    return {
        "application": str(LAUNCHER),
        "conf": conf,
        "jars": jars,
        "name": f"batchscore-{job}-{cfg.name}",
        "env_vars": {"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
        "application_args": [job, "--config", job_config, *job_args],
    }


def input_ready(job_config: str, ds: str) -> bool:
    """Sensor: the input table has committed files in partition ``ds`` (read from its Delta log)."""
    from batchscore.jobs.delta_log import partition_files

    cfg = load_job_config(job_config)
    if cfg.input.path is None or cfg.input.format != "delta":
        raise ConfigError("the input sensor needs a path-based Delta input (input.path, format delta)")
    column = cfg.input.partition_column or "ds"
    ready = bool(partition_files(resolve_location(cfg.input.path), column, ds))
    log.info("input %s partition %s=%s: %s", cfg.input.path, column, ds, "ready" if ready else "not yet")
    return ready


def check_partition(job_config: str, ds: str) -> dict[str, Any]:
    """After the job: output rows + quarantined rows must equal input rows for ``ds``; returns the summary."""
    from batchscore.jobs.delta_log import partition_rows

    cfg = load_job_config(job_config)
    column = cfg.input.partition_column or "ds"
    rows_in = partition_rows(resolve_location(cfg.input.path or ""), column, ds)
    out_column = cfg.output.partition_column or "ds"
    rows_out = partition_rows(resolve_location(cfg.output.path or ""), out_column, ds)
    quarantine = cfg.quarantine_section()
    quarantine_path = resolve_location(quarantine.path or "")
    has_quarantine = (Path(quarantine_path) / "_delta_log").is_dir()
    rows_quarantined = partition_rows(quarantine_path, out_column, ds) if has_quarantine else 0
    summary = {"ds": ds, "rows_in": rows_in, "rows_out": rows_out, "rows_quarantined": rows_quarantined}
    log.info("batchscore %s: %s", cfg.name, summary)
    if rows_out + rows_quarantined != rows_in:
        raise InvalidInputError(
            f"partition {ds}: expected output + quarantine rows to equal the input's {rows_in}, "
            f"found {rows_out} + {rows_quarantined}"
        )
    return summary


def latest_verdict(job_config: str, ds: str) -> dict[str, Any]:
    """The shadow comparison row this job wrote for ``ds`` (newest first), from the comparison table."""
    from batchscore.jobs.delta_log import read_rows

    cfg = load_job_config(job_config)
    if cfg.shadow is None or cfg.shadow.comparison.path is None:
        raise ConfigError("expected a job config with shadow.comparison.path")
    column = cfg.shadow.comparison.partition_column or "ds"
    rows = [r for r in read_rows(resolve_location(cfg.shadow.comparison.path)) if r.get(column) == ds]
    if not rows:
        raise InvalidInputError(f"no comparison row for {column}={ds} in {cfg.shadow.comparison.path}")
    row = max(rows, key=lambda r: r["compared_at"])
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}
