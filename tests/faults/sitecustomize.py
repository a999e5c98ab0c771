"""Test-only fault injection in real job processes: Spark's Python workers included.

Python imports ``sitecustomize`` as it starts, from the first folder on ``sys.path`` that has one. A test
that puts this folder on ``PYTHONPATH`` and sets ``BATCHSCORE_FAULT`` for a job process (``batchscore
submit``: spark-submit, its JVM, the Python driver and the workers, which inherit both) makes every
batch the scoring loop hands back be followed by the fault:

- ``fail_first_attempt``: the first attempt of partition 0 fails after it has handed back a batch;
- ``slow:<seconds>``: each task sleeps that long after every batch it hands back;
- ``kill_worker``: the worker kills itself with SIGKILL after its first batch, on every attempt, as the
  kernel's out-of-memory killer would.

Nothing in ``udfs`` or ``jobs`` knows about it.
"""

from __future__ import annotations

import os

FAULT = os.environ.get("BATCHSCORE_FAULT", "")


def _after_batch() -> None:
    import time

    if FAULT == "kill_worker":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    elif FAULT.startswith("slow:"):
        time.sleep(float(FAULT.split(":", 1)[1]))
    elif FAULT == "fail_first_attempt":
        from pyspark import TaskContext

        from batchscore.udfs.validation import worker_error

        context = TaskContext.get()
        if context is not None and context.partitionId() == 0 and context.attemptNumber() == 0:
            raise RuntimeError(worker_error("injected_fault", "first attempt of partition 0 fails (test)"))


def _install() -> None:
    try:
        from batchscore.udfs.runtime import ScoringLoop
    except ImportError:  # a process without the project (e.g. a build tool): nothing to inject into
        return
    scoring_run = ScoringLoop.run

    def run(self, batches):  # type: ignore[no-untyped-def]
        for batch in scoring_run(self, batches):
            yield batch
            _after_batch()

    ScoringLoop.run = run  # type: ignore[method-assign]


if FAULT:
    _install()
