"""The executor-side loop without Spark: Arrow in, Arrow out, with real torch modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from batchscore.udfs.arrow_tensor import features_to_numpy
from batchscore.udfs.cpu_kernels import cpu_forward, onednn_forward, sequential_forward
from batchscore.udfs.device import DeviceChoice, TaskResources, choose_device
from batchscore.udfs.predictors import TorchPredictor
from batchscore.udfs.runtime import ModelOutOfMemoryError, ScoringLoop, prefetch, rebatch
from batchscore.udfs.spec import OutputField, ScoringPlan, arrow_batch_rows
from batchscore.udfs.stats import empty_stats, latency_percentile_ms, merge, summary_metrics
from batchscore.udfs.worker_memory import ARROW_POOL

SCORE = (OutputField("score", "float32"),)
# The loop and the reference both compute in float32, but CPU kernels round differently for different
# batch shapes and memory layouts (seen on a 16-core host): compare at float32 precision.
F32 = {"rtol": 1e-5, "atol": 1e-6}


def table(rows: int, batch_rows: int) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(0)
    data = pa.table(
        {"id": np.arange(rows, dtype=np.int64), "a": rng.normal(size=rows), "b": rng.normal(size=rows)}
    )
    return data.to_batches(max_chunksize=batch_rows) if rows else []


def plan(batch_size: int, outputs=SCORE, features=("a", "b"), **kw) -> ScoringPlan:
    return ScoringPlan(
        feature_columns=features, passthrough_columns=("id",), outputs=outputs, batch_size=batch_size, **kw
    )


def linear() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1).eval()


def run(module, batches, p: ScoringPlan, stats=None) -> pa.Table:
    loop = ScoringLoop(TorchPredictor(module, "cpu", p.feature_columns, p.row_shape), p, stats)
    out = list(loop.run(iter(batches)))
    return pa.Table.from_batches(out) if out else pa.table({})


def reference(module, batches) -> np.ndarray:
    data = pa.Table.from_batches(batches)
    x = torch.tensor(np.column_stack([data["a"].to_numpy(), data["b"].to_numpy()]), dtype=torch.float32)
    with torch.no_grad():
        return module(x).numpy().reshape(-1)


@pytest.mark.parametrize(
    ("rows", "arrow_rows", "batch_size"),
    [(1, 1, 64), (10, 3, 4), (10, 10, 1000), (1000, 128, 100), (257, 1000, 256)],
)
def test_rebatched_scores_match_torch_and_keep_row_order(rows: int, arrow_rows: int, batch_size: int) -> None:
    module = linear()
    batches = table(rows, arrow_rows)
    result = run(module, batches, plan(batch_size))
    assert result["id"].to_pylist() == list(range(rows))
    np.testing.assert_allclose(result["score"].to_numpy(), reference(module, batches), **F32)


def test_rebatch_sizes_are_independent_of_arrow_batches() -> None:
    sizes = [b.num_rows for b in rebatch(table(1000, 128), 300)]
    assert sizes == [300, 300, 300, 100]
    assert [b.num_rows for b in rebatch(table(5, 2), 100)] == [5]
    assert list(rebatch([], 10)) == []


def test_rebatch_slices_large_source_batches_without_copying() -> None:
    source = table(1000, 1000)
    batches = [*source, *table(50, 50), *table(700, 700)]
    out = list(rebatch(batches, 300))
    assert [b.num_rows for b in out] == [300, 300, 300, 300, 300, 250]
    assert pa.Table.from_batches(out)["id"].to_pylist() == [*range(1000), *range(50), *range(700)]
    # The first three are views of the first source batch (same data buffer), not copies.
    assert out[0].column(1).buffers()[1].address == source[0].column(1).buffers()[1].address


def test_rebatch_keeps_a_large_tail_as_is_so_the_next_source_stays_aligned() -> None:
    files = [table(1000, 1000)[0], table(1000, 1000)[0]]  # e.g. two Parquet files
    out = list(rebatch(files, 384))
    assert [b.num_rows for b in out] == [384, 384, 232, 384, 384, 232]
    assert pa.Table.from_batches(out)["id"].to_pylist() == [*range(1000), *range(1000)]
    # Every batch is a view of its file's data, none a copy.
    addresses = [b.column(1).buffers()[1].address for b in out]
    assert addresses == [f.column(1).buffers()[1].address for f in files for _ in range(3)]


def test_rebatch_copies_only_the_batch_that_spans_two_sources() -> None:
    first, second = table(1000, 1000)[0], table(1000, 1000)[0]
    out = list(rebatch([first, second], 300))
    assert [b.num_rows for b in out] == [300, 300, 300, 300, 300, 300, 200]
    assert pa.Table.from_batches(out)["id"].to_pylist() == [*range(1000), *range(1000)]
    data = second.column(1).buffers()[1].address
    # out[3] joins first's last 100 rows with second's first 200; out[4] and out[5] are views of second.
    assert out[3].column(1).buffers()[1].address not in (data, first.column(1).buffers()[1].address)
    assert [b.column(1).buffers()[1].address for b in out[4:6]] == [data, data]
    assert out[4].column(1).offset == 200


@pytest.mark.parametrize(
    ("a", "proven"),
    [
        ([0.5, 1.5, -2.0], True),
        ([0.5, float("nan"), -2.0], False),
        ([0.5, float("inf"), -2.0], False),
        ([0.5, None, -2.0], False),
        ([0.5, 1e39, -2.0], False),  # finite as a double, infinite as the model's float32
    ],
)
def test_a_batch_is_proven_valid_on_its_decoded_buffer(a: list[float | None], proven: bool) -> None:
    batch = pa.record_batch({"id": [0, 1, 2], "a": pa.array(a, pa.float64()), "b": [1.0, 2.0, 3.0]})
    predictor = TorchPredictor(linear(), "cpu", ("a", "b"))
    inputs = predictor.decode_if_valid(batch)
    assert (inputs is not None) == proven
    if proven:
        np.testing.assert_array_equal(inputs.numpy(), predictor.decode(batch).numpy())


def test_arrays_of_unequal_length_are_left_to_the_row_check() -> None:
    batch = pa.record_batch({"v": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32()))})
    assert TorchPredictor(linear(), "cpu", ("v",)).decode_if_valid(batch) is None
    nested_null = pa.record_batch({"v": pa.array([[1.0, 2.0], [3.0, None]], pa.list_(pa.float32()))})
    assert TorchPredictor(linear(), "cpu", ("v",)).decode_if_valid(nested_null) is None


def test_empty_input_yields_nothing() -> None:
    assert run(linear(), [], plan(8)).num_rows == 0


class FlakyOnLargeBatches(torch.nn.Module):
    """Raises a real ``torch.OutOfMemoryError`` for batches over ``limit`` rows, like a GPU would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.inner = linear()
        self.limit = limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {x.shape[0]} rows")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_keeps_the_smaller_size() -> None:
    module = FlakyOnLargeBatches(limit=20)
    batches = table(200, 200)
    stats = empty_stats()
    result = run(module, batches, plan(100), stats)
    np.testing.assert_allclose(result["score"].to_numpy(), reference(module.inner, batches), **F32)
    assert result["id"].to_pylist() == list(range(200))
    # 100 fails, 50 fails, 25 fails, then 12-row chunks for the rest of the task: never 100 again.
    assert module.sizes[:4] == [100, 50, 25, 12]
    assert max(module.sizes[4:]) == 12
    assert stats["oom_backoffs"] == 3


def test_arrow_batches_hold_whole_model_batches() -> None:
    """Several model calls per Arrow batch: the model gets exactly batch_size rows per call (but the last),
    rows keep their order, and the stats count model calls and Arrow batches apart."""
    module = FlakyOnLargeBatches(limit=10**9)  # never fails: records the rows of each call
    batches = table(1000, 128)
    stats = empty_stats()
    result = run(module, batches, plan(64, arrow_batch_rows=256), stats)
    assert result["id"].to_pylist() == list(range(1000))
    np.testing.assert_allclose(result["score"].to_numpy(), reference(module.inner, batches), **F32)
    assert module.sizes == [64] * 15 + [40]  # Arrow batches of 256, 256, 256, 232 rows
    assert stats["batches"] == 16 and stats["arrow_batches"] == 4


def test_arrow_batch_rows_are_a_whole_number_of_model_batches() -> None:
    assert arrow_batch_rows(2048, 32 * 8) == 32768  # 8 MiB of 32 doubles
    assert arrow_batch_rows(8192, 32 * 8) == 32768
    assert arrow_batch_rows(1024, 768 * 4) == 2048  # 768-float embeddings
    assert arrow_batch_rows(4096, 768 * 4) == 4096  # never less than one model batch
    assert arrow_batch_rows(4096, None) == 4096  # row size unknown
    with pytest.raises(ValueError, match="multiple of batch_size 64, found 100"):
        plan(64, arrow_batch_rows=100)


def test_out_of_memory_at_one_row_fails_clearly() -> None:
    with pytest.raises(ModelOutOfMemoryError, match="even with a batch of 1 row"):
        run(FlakyOnLargeBatches(limit=0), table(4, 4), plan(4))


def test_non_oom_errors_are_not_retried() -> None:
    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights"):
        run(Broken(), table(4, 4), plan(4))


def test_vector_and_struct_inputs_are_stacked_without_pandas() -> None:
    emb = pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], type=pa.list_(pa.float32()))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0], pa.float64()), 2)
    point = pa.StructArray.from_arrays([pa.array([7, 8]), pa.array([0.5, 1.5])], names=["x", "y"])
    batch = pa.RecordBatch.from_arrays([emb, fixed, point, pa.array([9, 10])], names=["emb", "fx", "pt", "n"])
    assert features_to_numpy(batch, ["emb"]).tolist() == [[1, 2, 3], [4, 5, 6]]
    stacked = features_to_numpy(batch, ["n", "emb", "fx", "pt"])
    # One contiguous buffer, laid out feature by feature (column-major).
    assert stacked.dtype == np.float32 and stacked.flags["F_CONTIGUOUS"]
    assert stacked.tolist() == [[9, 1, 2, 3, 1, 2, 7, 0.5], [10, 4, 5, 6, 3, 4, 8, 1.5]]
    rows = features_to_numpy(batch, ["n", "emb", "fx", "pt"], row_major=True)
    assert rows.dtype == np.float32 and rows.flags["C_CONTIGUOUS"] and np.array_equal(rows, stacked)
    images = pa.array([list(range(12)), list(range(12, 24))], type=pa.list_(pa.float32()))
    image_batch = pa.RecordBatch.from_arrays([images], names=["img"])
    assert features_to_numpy(image_batch, ["img"], (3, 2, 2)).shape == (2, 3, 2, 2)
    ragged = pa.RecordBatch.from_arrays([pa.array([[1.0], [1.0, 2.0]])], names=["r"])
    with pytest.raises(ValueError, match=r"expected arrays of one length, found lengths 1\.\.2"):
        features_to_numpy(ragged, ["r"])
    with pytest.raises(TypeError, match="expected a numeric, array or struct column, found string"):
        features_to_numpy(pa.RecordBatch.from_arrays([pa.array(["x"])], names=["s"]), ["s"])


class TwoHeads(torch.nn.Module):
    """A multi-output model: a dict with a probability and an embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.body = torch.nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"prob": torch.sigmoid(h[:, :1]), "embedding": h}


def test_vector_and_struct_outputs() -> None:
    outputs = (
        OutputField(
            "pred",
            "",
            "struct",
            children=(OutputField("prob", "float32"), OutputField("embedding", "float32", "vector")),
        ),
    )
    module = TwoHeads().eval()
    batches = table(7, 3)
    result = run(module, batches, plan(4, outputs=outputs))
    assert result.schema.field("pred").type == pa.struct(
        [("prob", pa.float32()), ("embedding", pa.list_(pa.float32()))]
    )
    data = pa.Table.from_batches(batches)
    x = torch.tensor(np.column_stack([data["a"].to_numpy(), data["b"].to_numpy()]), dtype=torch.float32)
    with torch.no_grad():
        expected = module(x)
    pred = result["pred"].combine_chunks()
    np.testing.assert_allclose(pred.field("prob").to_numpy(), expected["prob"].numpy().reshape(-1), **F32)
    embedding = np.stack(pred.field("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(embedding, expected["embedding"].numpy(), **F32)


def test_bf16_autocast_on_cpu_returns_float32_scores() -> None:
    module = linear()
    batches = table(50, 50)
    p = plan(16, autocast="bf16")
    result = run(module, batches, p)
    assert result.schema.field("score").type == pa.float32()
    np.testing.assert_allclose(result["score"].to_numpy(), reference(module, batches), rtol=0.05, atol=0.05)


def test_prefetch_runs_ahead_in_a_thread_and_surfaces_errors() -> None:
    producers: set[str] = set()

    def items():
        for i in range(5):
            producers.add(threading.current_thread().name)
            yield i
        raise OSError("input stream broke")

    got = []
    with pytest.raises(OSError, match="input stream broke"):
        for item in prefetch(items(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert producers == {"batchscore-prefetch"}


def test_stats_latency_percentiles_and_merge() -> None:
    a, b = empty_stats(), empty_stats()
    from batchscore.udfs.stats import record_batch

    for ms in range(1, 101):  # 1..100 ms
        record_batch(a if ms % 2 else b, 10, ms / 3000, ms / 3000, ms / 3000)
    b["loads_by_worker"] = {"h:1": 1}
    a["task_s"], b["task_s"] = 0.5, 1.5
    a["batches"], b["batches"] = 150, 250  # model calls, counted by the loop
    merged = merge(a, b)
    assert merged["arrow_batches"] == 100 and merged["batches"] == 400 and merged["rows"] == 1000
    assert latency_percentile_ms(merged, 0.5) == pytest.approx(50, rel=0.07)
    assert latency_percentile_ms(merged, 0.99) == pytest.approx(99, rel=0.07)
    metrics = summary_metrics(merged)
    assert metrics["model_loads"] == 1 and metrics["scoring_workers"] == 1
    assert metrics["model_batches"] == 400 and metrics["arrow_batches"] == 100
    assert metrics["compute_mean_ms"] == pytest.approx(50.5 / 3, rel=1e-6)
    assert metrics["task_total_s"] == 2.0 and metrics["task_us_per_row"] == pytest.approx(2000.0)


@pytest.mark.parametrize(
    ("requested", "task", "cuda", "expected"),
    [
        ("auto", TaskResources(("1",), 2), 2, DeviceChoice("cuda:1", "task GPU address 1")),
        ("cuda", TaskResources(("0",), 1), 1, DeviceChoice("cuda:0", "task GPU address 0")),
        ("cpu", TaskResources(("0",), 3), 1, DeviceChoice("cpu", "configured", threads=3)),
        ("auto", TaskResources((), 2), 0, DeviceChoice("cpu", "no task GPU", threads=2)),
        ("cuda:1", TaskResources((), 1), 2, DeviceChoice("cuda:1", "configured")),
        (
            "auto",
            TaskResources(("0",), 1),
            0,
            DeviceChoice("cpu", "task GPU address 0 but no CUDA device", 1),
        ),
    ],
)
def test_device_choice(requested: str, task: TaskResources, cuda: int, expected: DeviceChoice) -> None:
    assert choose_device(requested, task, cuda) == expected


def test_configured_cuda_without_a_gpu_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        choose_device("cuda", TaskResources(), 0)


_READ_IN_A_FRESH_WORKER = """
import sys
import pyarrow as pa
import pyarrow.parquet as pq
from batchscore.udfs.worker_memory import use_arrow_pool
backend = use_arrow_pool()
pool = pa.default_memory_pool()
table = pq.read_table(sys.argv[1])
print(backend, pool.backend_name, pool.bytes_allocated() >= table.nbytes)
"""


@pytest.mark.parametrize("configured", [None, "system"])
def test_a_worker_reads_into_jemalloc_unless_its_environment_names_a_pool(
    tmp_path: Path, configured: str | None
) -> None:
    pq.write_table(pa.table({"x": np.arange(200_000, dtype=np.float64)}), tmp_path / "part.parquet")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if configured:
        env["ARROW_DEFAULT_MEMORY_POOL"] = configured
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-c", _READ_IN_A_FRESH_WORKER, str(tmp_path / "part.parquet")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    supported = ARROW_POOL in pa.supported_memory_backends()
    expected = configured or (ARROW_POOL if supported else pa.default_memory_pool().backend_name)
    backend, pool, holds_the_table = proc.stdout.split()
    assert backend == pool == expected
    assert holds_the_table == "True"  # the Parquet read's buffers came from that pool


def test_pair_predictor_scores_each_batch_with_both_models_from_one_decode() -> None:
    from batchscore.udfs.predictors import PairPredictor

    torch.manual_seed(1)
    champion, challenger = torch.nn.Linear(2, 1).eval(), torch.nn.Linear(2, 1).eval()
    outputs = (OutputField("score", "float32"), OutputField("score__challenger", "float32"))
    p = plan(64, outputs=outputs)
    pair = PairPredictor(
        TorchPredictor(champion, "cpu", ("a", "b")), TorchPredictor(challenger, "cpu", ("a", "b"))
    )
    assert pair.shared, "the same features on the same device: decoded once for both models"
    batches = table(300, 100)
    out = pa.Table.from_batches(list(ScoringLoop(pair, p).run(iter(batches))))
    assert out["id"].to_pylist() == list(range(300))
    np.testing.assert_allclose(out["score"].to_numpy(), reference(champion, batches), **F32)
    np.testing.assert_allclose(out["score__challenger"].to_numpy(), reference(challenger, batches), **F32)


def mlp(*extra: torch.nn.Module) -> torch.nn.Sequential:
    torch.manual_seed(2)
    nn = torch.nn
    return nn.Sequential(
        *extra,
        nn.Linear(8, 16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Identity(),
        nn.Linear(16, 2),
        nn.Sigmoid(),
    ).eval()


@pytest.mark.parametrize("leading", [(), (torch.nn.ReLU(),), (torch.nn.Sigmoid(), torch.nn.Tanh())])
def test_a_plain_mlp_runs_its_layers_directly_with_bitwise_the_same_outputs(leading) -> None:
    module = mlp(*leading)
    forward = sequential_forward(module)
    assert forward is not None
    x = torch.randn(1000, 8)
    before = x.clone()
    with torch.inference_mode():
        assert torch.equal(forward(x), module(x))
    assert torch.equal(x, before), "a leading activation must not overwrite the model's input"
    predictor = TorchPredictor(module, "cpu", tuple(f"f{i}" for i in range(8)), cpu_kernels="torch")
    assert predictor.forward is not module and not predictor.row_major
    forward, row_major = cpu_forward(module, "torch", 64)
    with torch.inference_mode():
        assert torch.equal(forward(x), module(x)) and not row_major


@pytest.mark.parametrize("leading", [(), (torch.nn.ReLU(),), (torch.nn.Sigmoid(), torch.nn.Tanh())])
def test_onednn_kernels_match_the_module_to_float32_rounding(leading) -> None:
    module = mlp(*leading)
    forward, row_major = cpu_forward(module, "onednn", 256)
    assert row_major and forward is not module, "torch's CPU build has oneDNN: the fused path must apply"
    x = torch.randn(1000, 8)
    before = x.clone()
    with torch.inference_mode():
        expected = module(x)
        found = forward(x)
        # Batches of other sizes than the packing hint (the tail of a file) give the same function.
        tail = forward(x[:7])
    torch.testing.assert_close(found, expected, **F32)
    torch.testing.assert_close(tail, expected[:7], **F32)
    assert torch.equal(x, before), "a leading activation must not overwrite the model's input"
    predictor = TorchPredictor(module, "cpu", tuple(f"f{i}" for i in range(8)), batch_size=256)
    assert predictor.row_major, "the default cpu_kernels is onednn"
    batch = pa.RecordBatch.from_arrays(
        [pa.array(np.arange(i, i + 5, dtype=np.float64)) for i in range(8)], names=[f"f{i}" for i in range(8)]
    )
    decoded = predictor.decode_if_valid(batch).numpy()
    assert decoded.flags["C_CONTIGUOUS"], "oneDNN reads rows: the batch is decoded row-major"
    assert decoded.tolist() == [[float(i + r) for i in range(8)] for r in range(5)]


def test_onednn_kernels_decline_what_they_cannot_run() -> None:
    assert onednn_forward(mlp().double(), 64) is None, "float64 weights: the module's own ops run"
    assert onednn_forward(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)), 64) is None
    assert onednn_forward(torch.nn.Sequential(torch.nn.ReLU()), 64) is None, "no linear layer"
    no_bias = torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False), torch.nn.ReLU()).eval()
    x = torch.randn(10, 8)
    with torch.inference_mode():
        torch.testing.assert_close(onednn_forward(no_bias, 64)(x), no_bias(x), **F32)
    double = mlp().double()
    forward, row_major = cpu_forward(double, "onednn", 64)
    x = x.double()
    with torch.inference_mode():
        assert torch.equal(forward(x), double(x)) and not row_major
    with pytest.raises(ValueError, match=r"expected model\.cpu_kernels onednn or torch, found 'mkl'"):
        cpu_forward(mlp(), "mkl", 64)
    # With autocast the module's own ops run, so that autocast picks their dtypes.
    assert not TorchPredictor(mlp(), "cpu", ("a",), autocast="bf16").row_major


def test_other_modules_run_as_they_are() -> None:
    nn = torch.nn

    class Subclass(nn.Sequential):
        pass

    hooked = mlp()
    hooked[0].register_forward_hook(lambda module, args, output: output * 2)
    training = mlp().train()
    patched = mlp()
    patched.forward = lambda x: x  # a forward replaced on the instance
    patched_layer = mlp()
    patched_layer[1].forward = lambda x: x
    for module in (
        Subclass(nn.Linear(8, 1)),  # its forward may differ
        hooked,
        training,  # dropout is live
        patched,
        patched_layer,
        nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)),  # a layer outside the supported set
        linear(),  # not a Sequential
    ):
        assert sequential_forward(module) is None, module
    # oneDNN's kernels replace its other linear layers; the hooked one runs as it is, hook and all.
    forward = TorchPredictor(hooked, "cpu", ("a",)).forward
    x = torch.randn(20, 8)
    with torch.inference_mode():
        torch.testing.assert_close(forward(x), hooked(x), **F32)
    assert TorchPredictor(training, "cpu", ("a",)).forward is training, "dropout is live: as it is"


def test_quarantined_rows_travel_in_one_struct_column_null_for_scored_rows() -> None:
    """Spark turns each column of a worker's result into row values one null check per row: the reason
    and raw row share one struct column, null for every scored row (the jobs flatten it)."""
    from batchscore.udfs.validation import INVALID_COLUMN, INVALID_TYPE

    batch = pa.record_batch(
        {"id": np.arange(4, dtype=np.int64), "a": [0.5, float("nan"), 1.5, 2.0], "b": [1.0, 2.0, 3.0, 4.0]}
    )
    out = run(linear(), [batch], plan(8, raw_columns=("id", "a", "b"))).sort_by("id")
    assert out.column_names == ["id", "score", INVALID_COLUMN]
    assert out.schema.field(INVALID_COLUMN).type == INVALID_TYPE
    invalid = out.column(INVALID_COLUMN).to_pylist()
    assert [row is None for row in invalid] == [True, False, True, True]
    assert "a" in invalid[1]["reason"] and json.loads(invalid[1]["row"])["id"] == 1
    scores = out.column("score").to_pylist()
    assert scores[1] is None and None not in (scores[0], scores[2], scores[3])
