"""``model.sharing: executor``: one model server per executor and device, shared by its tasks."""

from __future__ import annotations

import numpy as np
import pytest

from batchscore.jobs.planning import Lineage, PlanRequest, build_plan
from batchscore.jobs.registry import resolve_model
from batchscore.jobs.scoring import RuntimeStats, transform
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, job_config


def _scored(spark, registry: Registry, input_path: str, partitions: int, **model) -> tuple[dict, dict]:
    cfg = job_config(input_path, "unused", **model)
    resolved = resolve_model(cfg.model.uri, registry.tracking_uri)
    df = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[0]}'").repartition(partitions)
    plan = build_plan(resolved, PlanRequest.for_job(cfg), df.columns)
    stats = RuntimeStats()
    rows = transform(df, resolved.ref, plan, Lineage.for_model(resolved.ref, "t"), stats).collect()
    return {r["transaction_id"]: r["fraud_score"] for r in rows}, stats.merged()


def test_local_session_scores_through_one_server_equal_to_worker_mode(spark, registry, input_path) -> None:
    ours, stats = _scored(spark, registry, input_path, 8, batch_size=16, sharing="executor")
    theirs, _ = _scored(spark, registry, input_path, 8, batch_size=16)
    assert len(ours) == ROWS_PER_DAY and ours.keys() == theirs.keys()
    keys = sorted(ours)
    assert_close(np.array([ours[k] for k in keys]), np.array([theirs[k] for k in keys]))
    assert len(stats["servers"]) == 1, stats["servers"]
    assert [s["loads"] for s in stats["servers"].values()] == [1]
    assert sum(stats["loads_by_worker"].values()) == 0, "workers load nothing in executor mode"
    assert stats["requests"] >= ROWS_PER_DAY // 16
