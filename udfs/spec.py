"""Picklable descriptions shipped from the driver to the workers: which model, columns and outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OutputKind = Literal["scalar", "vector", "struct"]

# The one map of the output types we write: numpy dtype name -> Spark type name (as Spark's JSON schema and
# its DDL both spell it). A model output of any other dtype is refused when the job is planned.
SPARK_TYPES: dict[str, str] = {
    "float32": "float",
    "float64": "double",
    "int32": "integer",
    "int64": "long",
    "bool": "boolean",
}


@dataclass(frozen=True)
class ModelRef:
    """A model pinned on the driver: executors load exactly ``load_uri`` and never resolve an alias.

    ``requested_uri`` is what the user asked for (``models:/fraud@champion``); ``load_uri`` names one
    immutable version (``models:/fraud/3``) or run artifact (``runs:/<id>/model``).
    """

    requested_uri: str
    load_uri: str
    name: str | None
    version: str | None
    run_id: str | None
    artifact_uri: str
    flavor: Literal["pytorch", "pyfunc"]
    tracking_uri: str
    registry_uri: str

    @property
    def cache_key(self) -> str:
        """Key for the per-worker model cache: the pinned location, never the alias."""
        return self.load_uri


@dataclass(frozen=True)
class OutputField:
    """One prediction column.

    ``scalar``: column ``index`` of the model's ``(rows, k)`` output (or of its output named ``name``);
    ``vector``: the whole ``(rows, k)`` output as an array column; ``struct``: one column whose fields are
    ``children``, taken from a model that returns several named (dict) or positional (tuple) outputs.
    """

    name: str
    dtype: str  # numpy dtype name, a key of SPARK_TYPES ("" for struct)
    kind: OutputKind = "scalar"
    index: int = 0
    children: tuple[OutputField, ...] = ()

    @property
    def spark_type(self) -> str:
        """The column's Spark type as DDL, e.g. ``array<float>``."""
        if self.kind == "struct":
            return "struct<" + ",".join(f"{c.name}:{c.spark_type}" for c in self.children) + ">"
        base = SPARK_TYPES[self.dtype]
        return f"array<{base}>" if self.kind == "vector" else base

    def spark_json(self) -> Any:
        """The column's Spark type as Spark's JSON schema holds it (``DataType.fromJson`` reads it);
        elements and struct fields are never null."""
        if self.kind == "struct":
            fields = [{"name": c.name, "type": c.spark_json(), "nullable": False} for c in self.children]
            return {"type": "struct", "fields": fields}
        base = SPARK_TYPES[self.dtype]
        return (
            {"type": "array", "elementType": base, "containsNull": False} if self.kind == "vector" else base
        )


@dataclass(frozen=True)
class Sharing:
    """``model.sharing: executor``: one model-server process per (model version, device) on each
    executor, shared by all of its tasks, batching their requests together (Triton's dynamic batcher:
    model batches of up to ``max_batch_size`` rows, waiting at most ``max_queue_delay_ms`` for more)."""

    max_batch_size: int = 4096
    max_queue_delay_ms: float = 2.0
    idle_timeout_s: float = 600.0  # the server exits after this long without a request
    start_timeout_s: float = 600.0  # for a server to load its model and answer
    request_timeout_s: float = 300.0  # for one request's answer; then the server is killed as hung
    threads: int = 0  # torch threads of a CPU server (0: every core the executor's process may use)
    # Requests and responses of at least this many bytes travel through shared memory (None: never); it is
    # faster than the socket from the smallest requests up (bench/model_transport.py).
    shared_memory_min_bytes: int | None = 0


@dataclass(frozen=True)
class ScoringPlan:
    """What a worker does with each Arrow batch: features in, pass-through and prediction columns out."""

    feature_columns: tuple[str, ...]
    passthrough_columns: tuple[str, ...]
    outputs: tuple[OutputField, ...]
    batch_size: int = 4096  # rows per model call
    # Rows per Arrow batch read, validated, decoded and handed back: a whole number of model calls (0: one).
    # Larger than batch_size where rows are small, so the per-batch costs of reading, decoding and sending
    # are shared by several model calls while each call's activations stay in the core's cache.
    arrow_batch_rows: int = 0
    device: str = "auto"
    input_names: tuple[str, ...] = field(default=())  # column names a pyfunc model expects, in order
    row_shape: tuple[int, ...] = ()  # per-row tensor shape from a tensor signature, e.g. (3, 64, 64)
    autocast: str | None = None  # "bf16" or "fp16": torch.autocast on GPU (and bf16 on CPU)
    cpu_kernels: str = "onednn"  # plain MLPs on CPU: "onednn" (fused, prepacked) or "torch" (bitwise)
    prefetch: int = 2  # decoded batches kept ready ahead of the model
    on_invalid: Literal["quarantine", "fail"] = "quarantine"  # what a row the model cannot take does
    raw_columns: tuple[str, ...] = ()  # columns of an invalid row kept as JSON (keys and features)
    key_columns: tuple[str, ...] = ()  # output keys the worker sees: a row with a null key is invalid
    # The float dtype the model computes in ("float32" for torch): a finite input beyond its range would
    # reach the model as infinity, so such a row is invalid. None: values are given to the model as read.
    input_dtype: str | None = None
    # Shadow mode: (champion, challenger), each with its own plan; both resident in the worker, each
    # batch decoded once (shared when the models take the same tensor) and scored by both. ``outputs``
    # then holds the champion's one output column followed by the challenger's.
    pair: tuple[tuple[ModelRef, ScoringPlan], tuple[ModelRef, ScoringPlan]] | None = None
    sharing: Sharing | None = None  # None: each Python worker keeps its own copy (model.sharing: worker)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, found {self.batch_size}")
        if self.arrow_batch_rows < 0 or self.arrow_batch_rows % self.batch_size:
            raise ValueError(
                f"arrow_batch_rows must be 0 or a multiple of batch_size {self.batch_size}, "
                f"found {self.arrow_batch_rows}"
            )
        if not self.feature_columns:
            raise ValueError("a scoring plan needs at least one feature column, found none")
        if not self.outputs:
            raise ValueError("a scoring plan needs at least one output column, found none")

    @property
    def rows_per_arrow_batch(self) -> int:
        return self.arrow_batch_rows or self.batch_size


# About this many bytes of input features per Arrow batch (8 MiB: 32,768 rows of 32 doubles).
ARROW_BATCH_BYTES = 8 << 20


def arrow_batch_rows(batch_size: int, row_bytes: int | None, target: int = ARROW_BATCH_BYTES) -> int:
    """Rows per Arrow batch: the most whole model batches of ``row_bytes``-byte rows within ``target``
    bytes, at least one; one model batch when the row size is unknown (variable-length arrays)."""
    if not row_bytes or row_bytes <= 0:
        return batch_size
    return max(1, target // (row_bytes * batch_size)) * batch_size
