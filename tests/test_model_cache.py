"""The per-process model cache: one load per key, bounded, thread-safe, counted."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from batchscore.udfs import model_cache


@pytest.fixture(autouse=True)
def empty_cache():
    model_cache.clear()
    yield
    model_cache.clear()


def test_loads_once_per_key_and_counts() -> None:
    calls: list[str] = []

    def loader(name: str):
        return lambda: calls.append(name) or object()

    first = model_cache.get_or_load(("models:/m/1", "cpu"), loader("a"))
    again = model_cache.get_or_load(("models:/m/1", "cpu"), loader("a"))
    other_device = model_cache.get_or_load(("models:/m/1", "cuda:0"), loader("b"))
    assert first is again and first is not other_device
    assert calls == ["a", "b"]
    assert model_cache.load_count() == 2


def test_lru_bound_evicts_least_recently_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSCORE_MODEL_CACHE_SIZE", "2")
    for key in ("a", "b"):
        model_cache.get_or_load(key, object)
    model_cache.get_or_load("a", object)  # touch a: b is now least recently used
    model_cache.get_or_load("c", object)
    assert model_cache.resident_keys() == ["a", "c"]
    model_cache.get_or_load("b", object)
    assert model_cache.load_count() == 4


def test_concurrent_threads_load_once() -> None:
    loads = []

    def slow_load() -> object:
        loads.append(1)
        time.sleep(0.05)
        return object()

    results: list[object] = []
    threads = [
        threading.Thread(target=lambda: results.append(model_cache.get_or_load("k", slow_load)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert len({id(r) for r in results}) == 1


def test_failed_load_is_not_cached() -> None:
    def broken() -> object:
        raise OSError("artifact store unreachable")

    with pytest.raises(OSError):
        model_cache.get_or_load("k", broken)
    assert model_cache.load_count() == 0
    assert model_cache.get_or_load("k", lambda: "ok") == "ok"


def test_a_load_freezes_live_objects_and_an_eviction_releases_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frozen objects are skipped by the ``gc.collect()`` pyspark's daemon runs after every task; an evicted
    model caught in a reference cycle is still collected."""
    monkeypatch.setenv("BATCHSCORE_MODEL_CACHE_SIZE", "1")

    class Model:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic collector frees it

    first = model_cache.get_or_load("a", Model)
    assert gc.get_freeze_count() > 0
    assert not any(o is first for o in gc.get_objects())  # frozen: outside every generation
    released = weakref.ref(first)
    del first
    model_cache.get_or_load("b", Model)  # evicts a
    gc.collect()
    assert released() is None
