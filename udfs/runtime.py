"""The executor-side scoring loop: Arrow record batches in, scored Arrow record batches out.

Independent of Spark and MLflow, so the GPU check drives it exactly as a Spark task does:

* **re-batching** to the model's batch size, whatever Arrow's ``maxRecordsPerBatch`` is (the last batch
  may be smaller, down to one row);
* **prefetch**: a thread decodes the next batches (and, on CUDA, starts their host-to-device copies) while
  the model computes the current one;
* **out-of-memory back-off**: on a CUDA OOM the batch is retried in halves, down to one row; the smaller
  size is kept for the rest of the task; only then the task fails, saying so;
* **timings** per batch (decode, compute, encode) into the task's stats.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from udfs.arrow_tensor import ModelOutput, predictions_to_arrow
from udfs.predictors import Predictor
from udfs.spec import ScoringPlan
from udfs.stats import empty_stats, record_batch

log = logging.getLogger(__name__)


class ModelOutOfMemoryError(RuntimeError):
    """The model does not fit on its device even one row at a time."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Regroup record batches into batches of exactly ``size`` rows (the last one may be smaller)."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows < size:
            continue
        merged = pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
        start = 0
        while merged.num_rows - start >= size:
            yield merged.slice(start, size)
            start += size
        pending = [merged.slice(start)] if start < merged.num_rows else []
        pending_rows = merged.num_rows - start
    if pending_rows:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


_DONE = object()


def prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """Run ``items`` ``depth`` steps ahead in a background thread; errors surface in the consumer."""
    if depth <= 0:
        yield from items
        return
    ready: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            ready.put(exc)

    worker = threading.Thread(target=produce, name="batchscore-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _concat(parts: list[Any]) -> ModelOutput:
    """Join the outputs of the row ranges of one batch (arrays, dicts or tuples of arrays)."""
    first = parts[0]
    if len(parts) == 1:
        return first  # type: ignore[no-any-return]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}
    return [np.concatenate([p[i] for p in parts]) for i in range(len(first))]


def _rows(output: Any) -> int:
    if isinstance(output, np.ndarray):
        return int(output.shape[0])
    first = next(iter(output.values())) if isinstance(output, dict) else output[0]
    return len(first)


class ScoringLoop:
    """Scores one task's batches with a resident predictor; one instance per task."""

    def __init__(self, predictor: Predictor, plan: ScoringPlan, stats: dict[str, Any] | None = None) -> None:
        self.predictor = predictor
        self.plan = plan
        self.stats = stats if stats is not None else empty_stats()
        self.chunk = plan.batch_size  # shrinks on out-of-memory and stays small for the task

    def _decode(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, Any, float]:
        started = time.perf_counter()
        inputs = self.predictor.decode(batch)
        return batch, inputs, time.perf_counter() - started

    def compute(self, inputs: Any, rows: int) -> ModelOutput:
        """Run the model over ``rows`` decoded rows, halving the chunk on out-of-memory."""
        parts: list[ModelOutput] = []
        start = 0
        while start < rows:
            stop = min(start + self.chunk, rows)
            try:
                parts.append(self.predictor.compute(inputs, start, stop))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.predictor.release_memory()
                if self.chunk == 1:
                    raise ModelOutOfMemoryError(
                        f"the model ran out of memory on {self.predictor.device} even with a batch of 1 row; "
                        "it does not fit this device (use a larger GPU, autocast, or model.device=cpu)"
                    ) from exc
                self.chunk = max(1, min(self.chunk, stop - start) // 2)
                self.stats["oom_backoffs"] += 1
                log.warning(
                    "out of memory on %s with %d rows; retrying with batches of %d for the rest of the task",
                    self.predictor.device,
                    stop - start,
                    self.chunk,
                )
                continue
            start = stop
        return _concat(parts)

    def encode(self, batch: pa.RecordBatch, output: ModelOutput) -> pa.RecordBatch:
        rows = _rows(output)
        if rows != batch.num_rows:
            raise ValueError(f"the model returned {rows} rows for a batch of {batch.num_rows}")
        arrays = [batch.column(name) for name in self.plan.passthrough_columns]
        arrays += [predictions_to_arrow(output, out, i) for i, out in enumerate(self.plan.outputs)]
        names = [*self.plan.passthrough_columns, *(out.name for out in self.plan.outputs)]
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        decoded = prefetch(
            (self._decode(b) for b in rebatch(batches, self.plan.batch_size)), self.plan.prefetch
        )
        for batch, inputs, decode_s in decoded:
            started = time.perf_counter()
            output = self.compute(inputs, batch.num_rows)
            computed = time.perf_counter()
            scored = self.encode(batch, output)
            record_batch(
                self.stats, batch.num_rows, decode_s, computed - started, time.perf_counter() - computed
            )
            yield scored
