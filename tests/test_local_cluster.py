"""Executor-side behaviour on a real two-executor cluster (``local-cluster[2,1,1024]``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, reference_scores

ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 20  # at least 8 tasks per executor


@pytest.fixture(scope="module")
def cluster_run(registry: Registry, input_path: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    discovery = tmp_path_factory.mktemp("gpus") / "discover_gpus.sh"
    discovery.write_text('#!/usr/bin/env bash\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
    discovery.chmod(0o755)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster_probe", input_path, DATES[0], str(PARTITIONS), str(discovery)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_one_model_load_per_python_worker(cluster_run: dict) -> None:
    stats = cluster_run["stats"]
    assert cluster_run["executors"] == 2
    assert stats["tasks"] >= 2 * 8, "at least 8 tasks per executor"
    loads = stats["loads_by_worker"]
    assert len(loads) >= 2, f"both executors' workers should have scored, found {sorted(loads)}"
    # Every worker that scored loaded the model exactly once, however many tasks it ran.
    assert sum(loads.values()) == len(loads)
    assert set(loads.values()) == {1}
    assert stats["tasks"] > len(loads), "workers were reused across tasks"


@pytest.mark.slow
def test_cluster_scores_equal_single_process_reference(
    spark, registry: Registry, input_path: str, cluster_run
):
    scores = sorted(cluster_run["scores"])
    assert len(scores) == ROWS_PER_DAY
    source = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[0]}'").toPandas()
    source = source.sort_values("transaction_id")
    assert [s[0] for s in scores] == source["transaction_id"].tolist()
    reference = reference_scores(f"models:/fraud/{registry.champion}", source)
    assert_close(np.array([[s[1]] for s in scores]), reference)


@pytest.mark.slow
def test_tasks_see_their_gpu_addresses_and_fall_back_to_cpu_without_cuda(cluster_run: dict) -> None:
    stats = cluster_run["stats"]
    # Each task was given one of the addresses the discovery script announced...
    for worker, addresses in stats["gpu_addresses_by_worker"].items():
        assert len(addresses) >= 1 and set(addresses) <= {"0", "1"}, (worker, addresses)
    # ...and with no CUDA device on this machine, the worker scored on CPU instead of failing.
    assert set(stats["device_by_worker"].values()) == {"cpu"}
