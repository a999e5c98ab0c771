"""Nightly scoring: wait for the input partition of {{ ds }}, score it, check the row counts.

Settings come from conf/airflow/nightly_scoring.yaml ($BATCHSCORE_AIRFLOW_CONF for another folder). Parsing
reads that YAML and the job config only: no database, no Spark.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.standard.sensors.python import PythonSensor
from airflow.sdk import DAG, task

from batchscore.jobs.scheduling import check_partition, input_ready, load_dag_config, spark_submit_kwargs

cfg = load_dag_config("nightly_scoring")
job_config = cfg.job_config_path()

with DAG(**cfg.dag_kwargs("batchscore: score one input partition per day into Delta")) as dag:
    wait_for_input = PythonSensor(
        task_id="wait_for_input",
        python_callable=input_ready,
        op_kwargs={"job_config": job_config, "ds": "{{ ds }}"},
        mode=cfg.sensor.mode,
        poke_interval=cfg.sensor.poke_interval_s,
        timeout=cfg.sensor.timeout_s,
        retries=0,
    )
    if cfg.backend == "databricks":
        from airflow.providers.databricks.operators.databricks import DatabricksSubmitRunOperator

        assert cfg.databricks is not None, "backend databricks needs a 'databricks' section"
        cluster = (
            {"existing_cluster_id": cfg.databricks.existing_cluster_id}
            if cfg.databricks.existing_cluster_id
            else {"new_cluster": cfg.databricks.new_cluster}
        )
        score = DatabricksSubmitRunOperator(
            task_id="score",
            databricks_conn_id=cfg.databricks_conn_id,
            json={
                "run_name": f"{cfg.dag_id} {{{{ ds }}}}",
                "spark_python_task": {
                    "python_file": cfg.databricks.python_file,
                    "parameters": ["score", "--config", cfg.databricks.job_config, "--ds", "{{ ds }}"],
                },
                "libraries": cfg.databricks.libraries,
                **cluster,
            },
            execution_timeout=dt.timedelta(seconds=cfg.submit.execution_timeout_s),
        )
    else:
        from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

        score = SparkSubmitOperator(
            task_id="score",
            conn_id=cfg.spark_conn_id,
            execution_timeout=dt.timedelta(seconds=cfg.submit.execution_timeout_s),
            **spark_submit_kwargs("score", job_config, "--ds", "{{ ds }}"),
        )

    @task(retries=0)
    def check_row_counts(ds: str | None = None) -> dict[str, object]:
        """Output + quarantine rows == input rows for the partition; the summary goes to XCom."""
        return check_partition(job_config, str(ds))

    wait_for_input >> score >> check_row_counts()
