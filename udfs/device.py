"""Which device a worker scores on, decided inside the task.

Spark gives a task its GPUs as resource addresses (``TaskContext.get().resources()["gpu"].addresses``);
the model is loaded onto that GPU and stays resident there for the worker's life. Without task GPUs a
configured device is honoured, else CPU with torch's threads set to the task's cores so that concurrent
workers do not oversubscribe the machine.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResources:
    """What Spark gave the running task: GPU addresses and CPU cores."""

    gpu_addresses: tuple[str, ...] = ()
    cpus: int = 1


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cpu", "cuda:N"
    reason: str
    threads: int | None = None  # torch intra-op threads on CPU


def current_task_resources() -> TaskResources:
    """The running Spark task's resources; empty outside Spark (pyspark is optional here)."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return TaskResources()
    context = TaskContext.get()
    if context is None:
        return TaskResources()
    resources = context.resources()
    gpus = tuple(resources["gpu"].addresses) if "gpu" in resources else ()
    return TaskResources(gpu_addresses=gpus, cpus=max(1, int(context.cpus())))


def choose_device(requested: str, task: TaskResources, cuda_count: int) -> DeviceChoice:
    """Pick the device: task GPU > configured device > CPU.

    ``cuda_count`` is what torch sees in this process. An explicit ``cpu`` wins over task GPUs; ``cuda``
    without an index means the task's GPU when it has one, else GPU 0.
    """
    if requested == "cpu":
        return DeviceChoice("cpu", "configured", threads=task.cpus)
    if task.gpu_addresses and requested in ("auto", "cuda"):
        address = task.gpu_addresses[0]
        if cuda_count > 0:
            # Spark's addresses are the ordinals the discovery script reported (nvidia-smi indices).
            return DeviceChoice(f"cuda:{address}", f"task GPU address {address}")
        log.warning("the task was given GPU %s but torch sees no CUDA device; scoring on CPU", address)
        return DeviceChoice("cpu", f"task GPU address {address} but no CUDA device", threads=task.cpus)
    if requested.startswith("cuda"):
        if cuda_count == 0:
            raise RuntimeError(f"model.device is {requested!r} but torch sees no CUDA device on this worker")
        return DeviceChoice(requested if ":" in requested else "cuda:0", "configured")
    if requested != "auto":
        return DeviceChoice(requested, "configured")
    return DeviceChoice("cpu", "no task GPU", threads=task.cpus)


def apply_threads(choice: DeviceChoice) -> None:
    """Set torch's intra-op threads to the task's cores when scoring on CPU."""
    if choice.threads is not None:
        import torch

        if torch.get_num_threads() != choice.threads:
            torch.set_num_threads(choice.threads)


# glibc malloc serves blocks above its mmap threshold (128 KiB at first, adapting upwards) with fresh
# mmap()s, and gives the top of the heap back to the OS above its trim threshold. A scoring loop allocates
# the same few MB-sized activations every batch; with the defaults many of them come back as new pages, and
# the page faults cost more than the matmuls (MLP 32-128-64-1, batch 8192, one thread: 0.90 us/row with
# 245,000 faults per million rows, 0.37 us/row with none). Fixed thresholds keep them in the heap.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum on 64-bit
TRIM_THRESHOLD_BYTES = 256 << 20
_heap_tuned: bool | None = None


def keep_heap_resident() -> bool:
    """Once per worker process: fixed malloc mmap/trim thresholds (glibc only; elsewhere a no-op).
    Returns whether the thresholds are in effect."""
    global _heap_tuned
    if _heap_tuned is None:
        _heap_tuned = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _heap_tuned = bool(
                    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
                )
            except (OSError, AttributeError):  # musl or another libc without mallopt
                _heap_tuned = False
            if not _heap_tuned:
                log.info("malloc thresholds not set (no glibc mallopt); scoring works, with more page faults")
    return _heap_tuned


# pyarrow's default pool on Linux, mimalloc, gives a new worker its memory in transparent huge pages that the
# kernel zeroes, 2 MiB at a time, as they are first touched: a fresh worker's first large task spent ~0.45
# core-s more in the kernel per 5 M rows of 32 doubles (`clear_page_erms` under `do_huge_pmd_anonymous_page`
# was 16% of its CPU samples), and a warm-up task of 250,000 rows did not prevent it. Every `spark-submit`
# starts fresh workers, and Spark restarts a worker idle for a minute. jemalloc's pool costs the same once
# warm (10 M rows, two workers: 3.63 core-s either way) and most of that first-task cost goes away.
ARROW_POOL = "jemalloc"
_arrow_pool: str | None = None

# Arrow builds its jemalloc to hand freed pages back to the kernel at once, so a worker faulted every Parquet
# read's buffers in afresh: 10 files of 250,000 rows x 32 doubles read in a loop took ~98,000 page faults and
# 0.44 s a pass (0.30 s in the kernel), against ~10,000 and 0.23 s with this conf, which keeps freed pages
# MADV_FREE'd ("muzzy"): reused without a fault, yet reclaimable whenever the kernel needs memory. jemalloc
# reads it once, as pyarrow loads, so it must be in the worker's environment from its start: the Spark
# profiles set it through ``spark.executorEnv.JE_ARROW_MALLOC_CONF``.
ARROW_JEMALLOC_CONF = "muzzy_decay_ms:-1"


def use_arrow_pool() -> str:
    """Once per worker process: make :data:`ARROW_POOL` Arrow's default memory pool, unless the worker's
    environment names one (``ARROW_DEFAULT_MEMORY_POOL``, e.g. through ``spark.executorEnv``) or this
    pyarrow lacks it. Returns the default pool's backend. Buffers allocated before stay with their pool."""
    global _arrow_pool
    if _arrow_pool is None:
        import pyarrow as pa

        if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL") and ARROW_POOL in pa.supported_memory_backends():
            pa.set_memory_pool(getattr(pa, f"{ARROW_POOL}_memory_pool")())
            if ARROW_POOL == "jemalloc" and "JE_ARROW_MALLOC_CONF" not in os.environ:
                log.info(
                    "JE_ARROW_MALLOC_CONF is not in this worker's environment: Arrow's jemalloc returns "
                    "freed pages at once and reads fault them in again; set spark.executorEnv."
                    "JE_ARROW_MALLOC_CONF=%s (the batchscore Spark profiles do)",
                    ARROW_JEMALLOC_CONF,
                )
        _arrow_pool = pa.default_memory_pool().backend_name
    return _arrow_pool
