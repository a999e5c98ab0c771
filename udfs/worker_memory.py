"""Worker memory tuning, once per Python worker: allocators that keep the scoring loop's buffers resident.

A scoring loop allocates the same large buffers every batch (decoded features, activations, Arrow
reads). With the allocators' defaults many of them go back to the kernel when freed and come back as
fresh pages, zeroed and faulted in again; for small models those page faults cost more than the model.
``bench/RESULTS.md`` has the measurements behind each setting.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc malloc serves blocks above its mmap threshold (128 KiB at first, adapting upwards) with fresh
# mmap()s, and gives the top of the heap back to the OS above its trim threshold: a batch's MB-sized
# activations would come back as new pages every batch. Fixed thresholds keep them in the heap.
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
# kernel zeroes as they are first touched, which a fresh worker's first large task pays for in kernel time
# (every spark-submit starts fresh workers, and Spark restarts idle ones). jemalloc's pool costs the same
# once warm and avoids most of that first-task cost.
ARROW_POOL = "jemalloc"
_arrow_pool: str | None = None

# Arrow builds its jemalloc to hand freed pages back to the kernel at once, so a worker would fault every
# Parquet read's buffers in afresh. This conf keeps freed pages MADV_FREE'd ("muzzy"): reused without a
# fault, yet reclaimable whenever the kernel needs memory. jemalloc reads it once, as pyarrow loads, so it
# must be in the worker's environment from its start: the Spark profiles set it through
# ``spark.executorEnv.JE_ARROW_MALLOC_CONF``.
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
