"""GPU-only paths of the runtime: they skip on machines without CUDA (bench/gpu_check.py covers them on a
GPU host, with numbers in the README)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from batchscore.udfs.predictors import TorchPredictor
from batchscore.udfs.runtime import ScoringLoop
from batchscore.udfs.spec import OutputField, ScoringPlan

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (pinned-memory prefetch, device residency)"
)


def _batches(rows: int) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(0)
    data = pa.table({"id": np.arange(rows), "a": rng.normal(size=rows), "b": rng.normal(size=rows)})
    return data.to_batches(max_chunksize=100)


def test_decode_pins_and_starts_the_copy_on_a_side_stream() -> None:
    module = torch.nn.Linear(2, 1).to("cuda:0").eval()
    predictor = TorchPredictor(module, "cuda:0", ("a", "b"))
    tensor, ready = predictor.decode(_batches(10)[0])
    assert tensor.device == torch.device("cuda:0")
    assert isinstance(ready, torch.cuda.Event)


@pytest.mark.parametrize("autocast", [None, "bf16"])
def test_gpu_scores_match_cpu(autocast: str | None) -> None:
    torch.manual_seed(0)
    cpu = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).eval()
    gpu = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda:0")
    plan = ScoringPlan(
        ("a", "b"), ("id",), (OutputField("score", "float32"),), batch_size=64, autocast=autocast
    )
    batches = _batches(1000)
    out_gpu = pa.Table.from_batches(
        list(ScoringLoop(TorchPredictor(gpu, "cuda:0", ("a", "b"), (), autocast), plan).run(batches))
    )
    out_cpu = pa.Table.from_batches(
        list(ScoringLoop(TorchPredictor(cpu, "cpu", ("a", "b")), plan).run(batches))
    )
    tolerance = 2e-2 if autocast else 1e-5
    np.testing.assert_allclose(
        out_gpu["score"].to_numpy(), out_cpu["score"].to_numpy(), rtol=tolerance, atol=tolerance
    )
