"""Scores the test input on ``local-cluster[2,1,1024]`` in its own process (its own SparkContext) and prints
JSON: the scores and the workers' merged stats. Used by ``tests/test_local_cluster.py``.

Each executor's worker announces two fake GPUs through a discovery script, and every task asks for one, so
the Spark side of GPU scheduling (task resources -> address -> device choice) runs on a CPU-only machine.

    python -m tests.cluster_probe <input_path> <ds> <partitions> <discovery_script>
"""

from __future__ import annotations

import json
import sys

from batchscore.jobs.planning import Lineage, PlanRequest, build_plan
from batchscore.jobs.registry import resolve_model
from batchscore.jobs.scoring import RuntimeStats, transform
from batchscore.jobs.session import get_or_create_session
from batchscore.jobs.tracking import tracking_target
from tests.helpers import job_config


def main(input_path: str, ds: str, partitions: int, discovery: str) -> None:
    spark, _ = get_or_create_session(
        "local",
        {
            "spark.master": "local-cluster[2,1,1024]",
            "spark.python.worker.reuse": "true",
            "spark.task.maxFailures": "1",
            "spark.ui.enabled": "false",
            "spark.worker.resource.gpu.amount": "2",
            "spark.worker.resource.gpu.discoveryScript": discovery,
            "spark.executor.resource.gpu.amount": "1",
            "spark.task.resource.gpu.amount": "1",
            "spark.executor.resource.gpu.discoveryScript": discovery,
        },
    )
    try:
        cfg = job_config(input_path, "unused", batch_size=16)
        resolved = resolve_model(cfg.model.uri, tracking_target(cfg.mlflow).tracking_uri)
        df = spark.read.format("delta").load(input_path).where(f"ds = '{ds}'").repartition(partitions)
        stats = RuntimeStats()
        plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
        scored = transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, "cluster"), stats)
        rows = scored.select("transaction_id", "fraud_score").collect()
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
        print(
            json.dumps(
                {
                    "scores": [[r["transaction_id"], r["fraud_score"]] for r in rows],
                    "stats": stats.merged(),
                    "executors": executors,
                    "partitions": scored.rdd.getNumPartitions(),
                }
            )
        )
    finally:
        spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
