"""The serverless memory bench's own parts (`bench/worker_memory.py`): what it measures and runs under."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "worker_memory_under_test", ROOT / "bench" / "worker_memory.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_memory_parts_add_up_to_the_resident_size(bench) -> None:
    status = Path("/proc/self/status").read_text()
    rss = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    parts = bench.memory_parts(os.getpid())
    assert set(parts) == set(bench.PARTS)
    assert parts["anon"] > 10, parts
    assert abs(sum(parts.values()) - rss) < 0.1 * rss + 5, (parts, rss)


def test_the_serverless_profile_has_no_worker_environment_and_one_process_per_worker(
    bench, tmp_path: Path
) -> None:
    profile = yaml.safe_load(bench.serverless_profile(tmp_path / "p.yaml").read_text())
    local = yaml.safe_load((ROOT / "conf" / "spark" / "local.yaml").read_text())
    assert any(k.startswith("spark.executorEnv.") for k in local["conf"]), "the local profile sets one"
    assert not [k for k in profile["conf"] if k.startswith("spark.executorEnv.")]
    assert profile["conf"]["spark.python.use.daemon"] == "false"


def test_the_job_config_is_a_valid_job_with_the_databricks_batch_size(bench, tmp_path: Path) -> None:
    from batchscore.jobs.config import ScoringJobConfig

    path = bench.job_config(tmp_path / "job.yaml", "models:/m/1", "/data/in", "dataframe", tmp_path)
    cfg = ScoringJobConfig.model_validate(yaml.safe_load(path.read_text()))
    databricks = yaml.safe_load((ROOT / "conf" / "jobs" / "fraud_databricks.yaml").read_text())
    assert cfg.model.batch_size == databricks["model"]["batch_size"]
    assert cfg.input.read_mode == databricks["input"]["read_mode"] == "dataframe"
    assert cfg.quality.hold == "stage"
