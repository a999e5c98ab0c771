"""The job's own MLflow run: what was scored, with which pinned model, how fast."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchscore.jobs.config import MlflowSection
from batchscore.jobs.home import default_artifact_location, default_tracking_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str
    registry_uri: str
    timeout_s: float = 60.0  # mlflow.timeout_s


def tracking_target(section: MlflowSection, home: Path | None = None) -> TrackingTarget:
    """The tracking and registry URIs of a job: configured ones, else the embedded SQLite store."""
    tracking = section.tracking_uri or default_tracking_uri(home)
    return TrackingTarget(tracking, section.registry_uri or tracking, section.timeout_s)


def ensure_experiment(section: MlflowSection, home: Path | None = None) -> str:
    """The experiment id for ``section.experiment``, created with the configured artifact root if new."""
    import mlflow

    target = tracking_target(section, home)
    mlflow.set_tracking_uri(target.tracking_uri)
    experiment = mlflow.get_experiment_by_name(section.experiment)
    if experiment is not None:
        return str(experiment.experiment_id)
    location = section.artifact_location
    if location is None and target.tracking_uri.startswith("sqlite:"):
        location = default_artifact_location(home)
    return str(mlflow.create_experiment(section.experiment, artifact_location=location))


class JobRun:
    """Handle for logging to the job's run; a no-op when ``log_run`` is off (the id is still unique)."""

    def __init__(self, run_id: str, active: bool) -> None:
        self.run_id = run_id
        self.active = active

    def log_params(self, params: Mapping[str, object]) -> None:
        if self.active:
            import mlflow

            from batchscore.jobs.redact import redact

            mlflow.log_params({k: "" if v is None else redact(str(v)) for k, v in params.items()})

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_artifacts(str(folder), artifact_path)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics(dict(metrics))


# MLflow prints run, experiment and model links to stdout itself, with the tracking URI as configured,
# credentials included (http://user:password@host). The job logs its own link instead, through the
# redacting log handlers.
QUIET_MLFLOW = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_PRINT_MODEL_URLS_ON_CREATION": "false",
}


def quiet_mlflow() -> None:
    """Stop MLflow printing links to stdout, and mask secrets in what its loggers emit."""
    import logging as logging_module

    from batchscore.jobs import redact

    os.environ.update(QUIET_MLFLOW)
    redact.install(logging_module.getLogger("mlflow"))


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The MLflow UI's page of a run, without credentials; None for a store without a UI (SQLite)."""
    from batchscore.jobs.mlflow_http import shown_uri

    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{shown_uri(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


RUN_KEY, HOST, PID = "batchscore.run_key", "batchscore.host", "batchscore.pid"


def _process_gone(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OverflowError):
        return False
    return False


def end_abandoned_runs(
    client: Any, experiment_id: str, run_key: str, stale_after_h: float, now_ms: int | None = None
) -> list[str]:
    """Mark KILLED the runs of ``run_key`` (a job and its ds) that are still RUNNING but whose job is gone:
    killed (kill -9, a lost node) before MLflow could end them. Gone means: started on this host by a
    process that no longer exists, or started more than ``stale_after_h`` hours ago anywhere. Returns their
    ids. A run of another live process here is left alone (two runs of one partition at once are the
    write's to refuse)."""
    import socket
    import time

    if "'" in run_key:  # not expressible in an MLflow filter string; nothing to match then
        return []
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{run_key}' and attributes.status = 'RUNNING'"
    )
    host = socket.gethostname()
    ended = []
    for run in runs:
        tags = run.data.tags
        here_and_gone = tags.get(HOST) == host and _process_gone(tags.get(PID, ""))
        stale = now_ms - int(run.info.start_time or now_ms) > stale_after_h * 3_600_000
        if here_and_gone or stale:
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d abandoned MLflow run(s) of %s as KILLED: %s", len(ended), run_key, ended)
    return ended


@contextmanager
def job_run(section: MlflowSection, run_name: str, home: Path | None = None) -> Iterator[JobRun]:
    """Start the job's MLflow run; its id is the ``job_run_id`` on every output row. Runs of the same
    job and partition that a killed process left RUNNING are marked KILLED first
    (:func:`end_abandoned_runs`)."""
    if not section.log_run:
        yield JobRun(uuid.uuid4().hex, active=False)
        return
    import socket

    import mlflow

    quiet_mlflow()
    experiment_id = ensure_experiment(section, home)
    target = tracking_target(section, home)
    client = mlflow.MlflowClient(target.tracking_uri, target.registry_uri)
    end_abandoned_runs(client, experiment_id, run_name, section.stale_run_hours)
    tags = {RUN_KEY: run_name, HOST: socket.gethostname(), PID: str(os.getpid())}
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        link = run_link(target.tracking_uri, experiment_id, run.info.run_id)
        if link:
            log.info("MLflow run %s: %s", run.info.run_id, link)
        yield JobRun(run.info.run_id, active=True)
