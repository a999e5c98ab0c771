"""Scorer factories: the functions Spark runs over each partition.

The closure built here carries only the pinned :class:`ModelRef` and the :class:`ScoringPlan`; the model is
loaded inside the worker through :mod:`udfs.model_cache`, once per worker process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pyarrow as pa

from udfs import model_cache
from udfs.arrow_tensor import predictions_to_arrow
from udfs.predictors import Predictor, load_predictor
from udfs.spec import ModelRef, ScoringPlan

log = logging.getLogger(__name__)

ArrowScorer = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def resolve_device(requested: str) -> str:
    """The device to load onto: the configured one, else CPU (the runtime issue adds task GPU pinning)."""
    return "cpu" if requested == "auto" else requested


def cached_predictor(ref: ModelRef, plan: ScoringPlan, device: str) -> Predictor:
    """The worker-resident predictor for ``ref`` on ``device``, loaded on first use only."""
    return model_cache.get_or_load((ref.cache_key, device), lambda: load_predictor(ref, plan, device))


def score_batch(predictor: Predictor, batch: pa.RecordBatch, plan: ScoringPlan) -> pa.RecordBatch:
    """Score one Arrow batch: pass-through columns followed by the prediction columns."""
    predictions = predictor.predict(batch)
    if predictions.shape[0] != batch.num_rows:
        raise ValueError(f"the model returned {predictions.shape[0]} rows for a batch of {batch.num_rows}")
    arrays = [batch.column(name) for name in plan.passthrough_columns]
    arrays += [predictions_to_arrow(predictions, out) for out in plan.outputs]
    names = [*plan.passthrough_columns, *(out.name for out in plan.outputs)]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def make_arrow_scorer(ref: ModelRef, plan: ScoringPlan) -> ArrowScorer:
    """Build the ``mapInArrow`` function that scores a partition with the pinned model."""

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        predictor: Predictor | None = None
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if predictor is None:
                predictor = cached_predictor(ref, plan, resolve_device(plan.device))
            for start in range(0, batch.num_rows, plan.batch_size):
                yield score_batch(predictor, batch.slice(start, plan.batch_size), plan)

    return score_partition
