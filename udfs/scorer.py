"""Scorer factories: the functions Spark runs over each partition.

The closure built here carries only the pinned :class:`ModelRef` and the :class:`ScoringPlan`; the model is
loaded inside the worker through :mod:`udfs.model_cache`, once per worker
process and device, and stays resident for the following tasks.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from batchscore.udfs import model_cache
from batchscore.udfs.device import (
    DeviceChoice,
    apply_threads,
    choose_device,
    current_task_resources,
)
from batchscore.udfs.predictors import PairPredictor, Predictor, load_predictor
from batchscore.udfs.runtime import ScoringLoop
from batchscore.udfs.spec import ModelRef, ScoringPlan
from batchscore.udfs.stats import empty_stats, to_json, worker_id
from batchscore.udfs.validation import INVALID_COLUMN, INVALID_FIELDS, worker_error
from batchscore.udfs.worker_memory import keep_heap_resident, use_arrow_pool

log = logging.getLogger(__name__)

ArrowScorer = Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]


def cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def cached_predictor(ref: ModelRef, plan: ScoringPlan, device: str) -> Predictor:
    """The worker-resident predictor for ``ref`` on ``device``, loaded on first use only.

    A load failure names the model, the worker and the cause in one line the driver reports as is.
    """

    def load() -> Predictor:
        try:
            return load_predictor(ref, plan, device)
        except Exception as exc:
            cause = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
            raise RuntimeError(
                worker_error("model_load", f"model {ref.load_uri} failed to load on {worker_id()}: {cause}")
            ) from exc

    return model_cache.get_or_load((ref.cache_key, device), load)


def task_device(plan: ScoringPlan) -> tuple[DeviceChoice, tuple[str, ...]]:
    """The device this task scores on, and the GPU addresses Spark gave it. torch is imported only to
    count GPUs when the task has some or a GPU is configured (a CPU task of an executor's model server
    never imports it)."""
    resources = current_task_resources()
    wants_gpu = bool(resources.gpu_addresses) or plan.device.startswith("cuda")
    cuda = cuda_device_count() if plan.device != "cpu" and wants_gpu else 0
    choice = choose_device(plan.device, resources, cuda)
    if plan.sharing is None:  # a model server sets its own threads
        apply_threads(choice)
    keep_heap_resident()
    return choice, resources.gpu_addresses


def task_predictor(ref: ModelRef, plan: ScoringPlan, device: str, stats: dict[str, Any]) -> Predictor:
    """This task's predictor: the worker's resident copy, or the executor's model server
    (``model.sharing: executor``)."""
    if plan.sharing is None:
        return cached_predictor(ref, plan, device)
    from batchscore.udfs.model_client import RemotePredictor, server_client

    return RemotePredictor(server_client(ref, plan, device), plan, stats)


def with_task_stats(batch: pa.RecordBatch, stats: dict[str, Any]) -> pa.RecordBatch:
    """``batch`` with the task's ``stats`` as JSON in the stats field of its first row's status struct
    (:data:`udfs.validation.INVALID_COLUMN`); that row's reason and raw values stay as they are."""
    index = batch.schema.get_field_index(INVALID_COLUMN)
    status = batch.column(index)
    reason, raw, _ = status.flatten()
    texts = pa.array([to_json(stats), *([None] * (batch.num_rows - 1))], pa.string())
    mask = status.is_null().to_numpy(zero_copy_only=False).copy()
    mask[0] = False
    tagged = pa.StructArray.from_arrays([reason, raw, texts], names=list(INVALID_FIELDS), mask=pa.array(mask))
    return batch.set_column(index, INVALID_COLUMN, tagged)


def make_arrow_scorer(ref: ModelRef, plan: ScoringPlan) -> ArrowScorer:
    """Build the ``mapInArrow`` function that scores a partition with the pinned model.

    Each task's loads, devices and batch timings go out with its last batch (:func:`with_task_stats`).
    """

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        stats = empty_stats()
        stats["tasks"] = 1
        loads_before = model_cache.load_count()
        worker = worker_id()
        use_arrow_pool()  # before the first batch is read: a file scorer reads it from Parquet
        non_empty = (b for b in batches if b.num_rows > 0)
        first = next(non_empty, None)
        if first is None:  # an empty partition never loads the model, and has no row to send stats on
            return
        setup = time.perf_counter()
        choice, addresses = task_device(plan)
        if plan.pair is not None:  # shadow mode: both models resident, each batch scored by both
            (first_ref, first_plan), (second_ref, second_plan) = plan.pair
            predictor: Predictor = PairPredictor(
                task_predictor(first_ref, first_plan, choice.device, stats),
                task_predictor(second_ref, second_plan, choice.device, stats),
            )
        else:
            predictor = task_predictor(ref, plan, choice.device, stats)
        if model_cache.load_count() > loads_before:  # this task loaded the model (torch import included)
            stats["load_s"] = time.perf_counter() - setup
        stats["device_by_worker"][worker] = choice.device
        stats["gpu_addresses_by_worker"][worker] = list(addresses)
        started = time.perf_counter()  # scoring only: a first task's model load is not per-row cost
        stats["first_at"] = time.time()
        held = None  # the last batch is held back until the stats are complete
        for out in ScoringLoop(predictor, plan, stats).run(itertools.chain([first], non_empty)):
            if out.num_rows == 0:
                continue
            if held is not None:
                yield held
            held = out
        # Only workers that scored rows count, so loads == workers when each loaded once.
        stats["loads_by_worker"][worker] = model_cache.load_count() - loads_before
        stats["task_s"] = time.perf_counter() - started
        stats["last_at"] = time.time()
        if held is not None:
            yield with_task_stats(held, stats)

    return score_partition
