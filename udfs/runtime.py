"""The executor-side scoring loop: Arrow record batches in, scored Arrow record batches out.

Independent of Spark and MLflow, so the GPU check drives it exactly as a Spark task does:

* **re-batching** to the plan's Arrow batch size, whatever Arrow's ``maxRecordsPerBatch`` is or however
  the input's files divide into batches (a file's last batch may hold just over half as many rows, the
  very last batch down to one);
* **prefetch**: a thread decodes the next batches (and, on CUDA, starts their host-to-device copies) while
  the model computes the current one;
* **out-of-memory back-off**: on a CUDA OOM the batch is retried in halves, down to one row; the smaller
  size is kept for the rest of the task; only then the task fails, saying so;
* **row validation** (:mod:`udfs.validation`): rows with null/NaN/infinite features or wrong array lengths
  never reach the model; with ``on_invalid: quarantine`` they are emitted with a reason and their raw values
  (the driver writes them to the quarantine table), and rows the model itself rejects (it raises on them)
  are isolated by bisecting the batch; with ``fail`` the task fails naming the row;
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

from batchscore.udfs.arrow_tensor import ModelOutput, arrow_type, predictions_to_arrow
from batchscore.udfs.predictors import Predictor
from batchscore.udfs.spec import ScoringPlan
from batchscore.udfs.stats import bucket_of, empty_stats, record_batch
from batchscore.udfs.validation import (
    INVALID_COLUMN,
    INVALID_FIELDS,
    INVALID_TYPE,
    InvalidRowsError,
    find_invalid,
    has_nulls,
    raw_rows_json,
    worker_error,
)

log = logging.getLogger(__name__)


class ModelOutOfMemoryError(RuntimeError):
    """The model does not fit on its device even one row at a time."""


class ModelServerError(RuntimeError):
    """The executor's model server failed (did not start, answer or load), not the rows sent to it: the
    task fails as it is, without quarantining the rows."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _joined(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    """One record batch of ``parts`` (a copy)."""
    return pa.Table.from_batches(parts).combine_chunks().to_batches()[0]


def rebatch(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.RecordBatch]:
    """Regroup record batches into batches of at most ``size`` rows, copying as few rows as possible.

    Whole batches within a source batch are zero-copy slices, and so is a source batch's tail of more than
    half of ``size`` (e.g. the last rows of each Parquet file: with exact sizes, one file's tail would
    misalign every batch of the next file, and each would be copied). Smaller tails and small source
    batches are joined, copied once, with the rows that follow them up to ``size``.
    """
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for source in batches:
        batch = source
        if pending:  # complete the joined batch with just the rows it lacks
            head = batch.slice(0, size - pending_rows)
            pending.append(head)
            pending_rows += head.num_rows
            batch = batch.slice(head.num_rows)
            if pending_rows < size:
                continue
            yield _joined(pending)
            pending, pending_rows = [], 0
        whole = batch.num_rows - batch.num_rows % size
        for start in range(0, whole, size):
            yield batch.slice(start, size)
        tail = batch.num_rows - whole
        if tail * 2 > size:
            yield batch.slice(whole)
        elif tail:
            pending, pending_rows = [batch.slice(whole)], tail
    if pending_rows:
        yield _joined(pending)


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

    def _decode(self, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, Any, Rejected | None, float]:
        """Validate, then decode the valid rows (in the prefetch thread). A clean batch is decoded once
        and proven valid on the decoded buffer; only otherwise is each column checked row by row."""
        started = time.perf_counter()
        plan = self.plan
        inputs = None if has_nulls(batch, plan.key_columns) else self.predictor.decode_if_valid(batch)
        if inputs is not None:
            return batch, inputs, None, time.perf_counter() - started
        rejected: Rejected | None = None
        invalid = find_invalid(
            batch,
            plan.feature_columns,
            plan.row_shape,
            key_columns=plan.key_columns,
            input_dtype=plan.input_dtype,
        )
        if invalid:
            if self.plan.on_invalid == "fail":
                raise self.invalid_rows_error(batch, invalid)
            rejected = (batch, invalid)
            keep = np.ones(batch.num_rows, dtype=bool)
            keep[list(invalid)] = False
            batch = batch.filter(pa.array(keep))
        inputs = self.predictor.decode(batch) if batch.num_rows else None
        return batch, inputs, rejected, time.perf_counter() - started

    def invalid_rows_error(self, batch: pa.RecordBatch, invalid: dict[int, str]) -> InvalidRowsError:
        """The task's error under ``on_invalid: fail``, naming the first invalid row and its reason."""
        row, reason = next(iter(invalid.items()))
        return InvalidRowsError(
            worker_error(
                "invalid_rows",
                f"{len(invalid)} invalid row(s) in a batch of {batch.num_rows}; first: "
                f"{raw_rows_json(batch, [row], self.plan.raw_columns)[0]}: {reason} "
                "(quality.on_invalid is fail; quarantine sends such rows to the quarantine table)",
            )
        )

    def compute(self, inputs: Any, rows: int) -> ModelOutput:
        """Run the model over ``rows`` decoded rows, ``batch_size`` rows per call (an Arrow batch holds a
        whole number of them), halving the chunk on out-of-memory."""
        parts: list[ModelOutput] = []
        start = 0
        while start < rows:
            stop = min(start + self.chunk, rows)
            try:
                called = time.perf_counter()
                parts.append(self.predictor.compute(inputs, start, stop))
                self.stats["call_hist"][bucket_of((time.perf_counter() - called) * 1000.0)] += 1
                self.stats["batches"] += 1
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

    def _quarantining(self) -> bool:
        return self.plan.on_invalid == "quarantine"

    def encode(self, batch: pa.RecordBatch, output: ModelOutput) -> pa.RecordBatch:
        rows = _rows(output)
        if rows != batch.num_rows:
            raise ValueError(f"the model returned {rows} rows for a batch of {batch.num_rows}")
        arrays = [batch.column(name) for name in self.plan.passthrough_columns]
        arrays += [predictions_to_arrow(output, out, i) for i, out in enumerate(self.plan.outputs)]
        names = [*self.plan.passthrough_columns, *(out.name for out in self.plan.outputs)]
        arrays.append(pa.nulls(rows, INVALID_TYPE))  # null: a scored row (the stats ride on it, see scorer)
        names.append(INVALID_COLUMN)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def encode_invalid(self, batch: pa.RecordBatch, invalid: dict[int, str]) -> pa.RecordBatch:
        """The invalid rows of ``batch``: pass-through columns, null predictions, and the reason and raw
        JSON in :data:`INVALID_COLUMN`."""
        rows = list(invalid)
        taken = batch.take(pa.array(rows, type=pa.int64()))
        arrays = [taken.column(name) for name in self.plan.passthrough_columns]
        arrays += [pa.nulls(len(rows), arrow_type(out)) for out in self.plan.outputs]
        reasons = pa.array([invalid[r] for r in rows], pa.string())
        raw = pa.array(raw_rows_json(batch, rows, self.plan.raw_columns), pa.string())
        stats = pa.nulls(len(rows), pa.string())
        arrays.append(pa.StructArray.from_arrays([reasons, raw, stats], names=list(INVALID_FIELDS)))
        names = [*self.plan.passthrough_columns, *(out.name for out in self.plan.outputs), INVALID_COLUMN]
        self.stats["invalid_rows"] += len(rows)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def emit(self, batch: pa.RecordBatch, output: ModelOutput) -> Iterator[pa.RecordBatch]:
        """The scored rows of ``batch``; rows for which the model returned NaN or infinity are invalid (a
        published score must be a number): quarantined, or the task fails under ``on_invalid: fail``."""
        invalid = non_finite_rows(output, self.plan)
        if not invalid:
            yield self.encode(batch, output)
            return
        if not self._quarantining():
            raise self.invalid_rows_error(batch, invalid)
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[list(invalid)] = False
        if keep.any():
            yield self.encode(batch.filter(pa.array(keep)), _take(output, keep))
        yield self.encode_invalid(batch, invalid)

    def isolate_rejected(self, batch: pa.RecordBatch, error: Exception) -> Iterator[pa.RecordBatch]:
        """The model raised on ``batch``: bisect it, score the parts it accepts, quarantine single rows it
        rejects. When it rejects every row, the model (not the data) is at fault: ``error`` is raised."""
        accepted: list[tuple[pa.RecordBatch, ModelOutput]] = []
        rejected: dict[int, str] = {}

        def visit(part: pa.RecordBatch, offset: int) -> None:
            try:
                accepted.append((part, self.compute(self.predictor.decode(part), part.num_rows)))
            except Exception as exc:
                if is_out_of_memory(exc) or isinstance(exc, ModelServerError):
                    raise
                if part.num_rows == 1:
                    rejected[offset] = f"model rejected the row: {type(exc).__name__}: {exc}"[:1000]
                    return
                half = part.num_rows // 2
                visit(part.slice(0, half), offset)
                visit(part.slice(half), offset + half)

        if batch.num_rows == 1:
            rejected[0] = f"model rejected the row: {type(error).__name__}: {error}"[:1000]
        else:
            half = batch.num_rows // 2
            visit(batch.slice(0, half), 0)
            visit(batch.slice(half), half)
        if not accepted and batch.num_rows > 1:
            raise error
        for part, output in accepted:
            yield from self.emit(part, output)
        if rejected:
            log.warning("the model rejected %d of %d rows; quarantined", len(rejected), batch.num_rows)
            yield self.encode_invalid(batch, rejected)

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        decoded = prefetch(
            (self._decode(b) for b in rebatch(batches, self.plan.rows_per_arrow_batch)), self.plan.prefetch
        )
        for batch, inputs, rejected, decode_s in decoded:
            if rejected is not None:
                yield self.encode_invalid(*rejected)
            if batch.num_rows == 0:
                continue
            started = time.perf_counter()
            try:
                output = self.compute(inputs, batch.num_rows)
            except Exception as exc:
                if not self._quarantining() or isinstance(exc, (ModelOutOfMemoryError, ModelServerError)):
                    raise
                yield from self.isolate_rejected(batch, exc)
                continue
            computed = time.perf_counter()
            scored = list(self.emit(batch, output))
            record_batch(
                self.stats, batch.num_rows, decode_s, computed - started, time.perf_counter() - computed
            )
            yield from scored


Rejected = tuple[pa.RecordBatch, dict[int, str]]


def _output_arrays(output: ModelOutput, plan: ScoringPlan) -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
    """(output column name, values) of each float array a model output holds."""
    if isinstance(output, np.ndarray):
        named: list[tuple[str, Any]] = [
            (plan.outputs[0].name if len(plan.outputs) == 1 else "output", output)
        ]
    elif isinstance(output, dict):
        named = list(output.items())
    else:
        names = [o.name for o in plan.outputs]
        named = [(names[i] if i < len(names) else f"output {i}", v) for i, v in enumerate(output)]
    for name, values in named:
        array = np.asarray(values)
        if array.dtype.kind == "f":
            yield name, array


def non_finite_rows(output: ModelOutput, plan: ScoringPlan) -> dict[int, str]:
    """Row index -> reason for the rows whose outputs hold NaN or infinity (one sum per output when none
    do, which is the common case)."""
    reasons: dict[int, list[str]] = {}
    for name, array in _output_arrays(output, plan):
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(array.sum(dtype=np.float64)):
                continue
        flat = array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)
        for row in np.flatnonzero(~np.isfinite(flat).all(axis=1)):
            value = flat[row][~np.isfinite(flat[row])][0]
            kind = "NaN" if np.isnan(value) else "infinite"
            reasons.setdefault(int(row), []).append(f"model output {name}: {kind}")
    return {row: "; ".join(found) for row, found in sorted(reasons.items())}


def _take(output: ModelOutput, keep: np.ndarray[Any, Any]) -> ModelOutput:
    """The rows of a model output (array, dict or list of arrays) where ``keep`` is true."""
    if isinstance(output, np.ndarray):
        taken: np.ndarray[Any, Any] = output[keep]
        return taken
    if isinstance(output, dict):
        return {k: np.asarray(v)[keep] for k, v in output.items()}
    return [np.asarray(v)[keep] for v in output]
