"""Which device a worker scores on, decided inside the task.

Spark gives a task its GPUs as resource addresses (``TaskContext.get().resources()["gpu"].addresses``);
the model is loaded onto that GPU and stays resident there for the worker's life. Without task GPUs a
configured device is honoured, else CPU with torch's threads set to the task's cores so that concurrent
workers do not oversubscribe the machine.
"""

from __future__ import annotations

import logging
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
