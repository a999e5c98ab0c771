"""The per-process model cache.

A module is imported once per Python worker, and with ``spark.python.worker.reuse=true`` the worker outlives
its tasks, so a model stored here is loaded once per worker for the whole job, not once per task or batch.
The cache is bounded (LRU), locked (a worker may run threads), keyed by pinned model version + device, and
counts its loads so tests can prove "once per worker".

After each load the worker's live objects (its imports, the resident models) are frozen out of the cyclic
garbage collector's reach: pyspark's daemon runs ``gc.collect()`` after every task of a reused worker, and
with torch and MLflow imported that walks hundreds of thousands of objects, which would delay the start of
every task but a worker's first. Evicting a model unfreezes them, so the evicted model
is collected as usual.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_MAX_ENTRIES = 4

_lock = threading.Lock()
_models: OrderedDict[Hashable, Any] = OrderedDict()
_loads = 0


def max_entries() -> int:
    """The bound on resident models, ``BATCHSCORE_MODEL_CACHE_SIZE`` (default 4)."""
    return max(1, int(os.environ.get("BATCHSCORE_MODEL_CACHE_SIZE", DEFAULT_MAX_ENTRIES)))


def get_or_load(key: Hashable, load: Callable[[], T]) -> T:
    """Return the model cached under ``key``, calling ``load`` only when it is not resident.

    The lock is held while loading so two threads of one worker never load the same model twice.
    """
    global _loads
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            model: T = _models[key]
            return model
        model = load()
        _loads += 1
        _models[key] = model
        while len(_models) > max_entries():
            _models.popitem(last=False)
            gc.unfreeze()  # the evicted model's objects may be collected again
        gc.collect()  # garbage of the load, not to be frozen
        gc.freeze()
        return model


def load_count() -> int:
    """How many times this process loaded a model (cache misses)."""
    return _loads


def resident_keys() -> list[Hashable]:
    """Keys of the resident models, least recently used first."""
    with _lock:
        return list(_models)


def clear() -> None:
    """Drop every resident model and reset the load counter (tests only)."""
    global _loads
    with _lock:
        _models.clear()
        _loads = 0
        gc.unfreeze()
