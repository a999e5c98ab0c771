"""Shadow comparison: score {{ ds }} with champion and challenger, then promote on a pass (when
auto_promote is on in conf/airflow/shadow_comparison.yaml) or record the verdict and stop.
"""

from __future__ import annotations

import datetime as dt

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, task

from batchscore.jobs.scheduling import latest_verdict, load_dag_config, spark_submit_kwargs

cfg = load_dag_config("shadow_comparison")
job_config = cfg.job_config_path()

with DAG(
    **cfg.dag_kwargs("batchscore: champion vs challenger on one partition, then promote or record")
) as dag:
    shadow = SparkSubmitOperator(
        task_id="shadow",
        conn_id=cfg.spark_conn_id,
        execution_timeout=dt.timedelta(seconds=cfg.submit.execution_timeout_s),
        **spark_submit_kwargs("shadow", job_config, "--ds", "{{ ds }}"),
    )

    @task.branch(retries=0)
    def branch_on_verdict(ds: str | None = None) -> str:
        row = latest_verdict(job_config, str(ds))
        pair = f"{row['challenger_uri']} vs {row['champion_uri']}"
        print(f"verdict {row['verdict']} for {pair}: {row['failed_checks']}")
        return "promote" if row["verdict"] == "pass" and cfg.auto_promote else "record_verdict"

    promote = BashOperator(
        task_id="promote",
        bash_command=f"batchscore promote --config '{job_config}' --reason 'airflow {{{{ run_id }}}}'",
        retries=0,
    )

    @task(retries=0)
    def record_verdict(ds: str | None = None) -> dict[str, object]:
        """No promotion: the verdict (and why) goes to the log and XCom for alerting."""
        row = latest_verdict(job_config, str(ds))
        print(
            f"not promoted: verdict {row['verdict']}; auto_promote={cfg.auto_promote}; {row['failed_checks']}"
        )
        keys = ("verdict", "failed_checks", "champion_uri", "challenger_uri", "job_run_id")
        return {k: row[k] for k in keys}

    shadow >> branch_on_verdict() >> [promote, record_verdict()]
