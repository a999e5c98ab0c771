"""The job's own MLflow run: what was scored, with which pinned model, how fast."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobs.config import MlflowSection
from jobs.home import default_artifact_location, default_tracking_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str
    registry_uri: str


def tracking_target(section: MlflowSection, home: Path | None = None) -> TrackingTarget:
    """The tracking and registry URIs of a job: configured ones, else the embedded SQLite store."""
    tracking = section.tracking_uri or default_tracking_uri(home)
    return TrackingTarget(tracking, section.registry_uri or tracking)


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

            from jobs.redact import redact

            mlflow.log_params({k: "" if v is None else redact(str(v)) for k, v in params.items()})

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        if self.active:
            import mlflow

            mlflow.log_artifacts(str(folder), artifact_path)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics(dict(metrics))


@contextmanager
def job_run(section: MlflowSection, run_name: str, home: Path | None = None) -> Iterator[JobRun]:
    """Start the job's MLflow run; its id is the ``job_run_id`` on every output row."""
    if not section.log_run:
        yield JobRun(uuid.uuid4().hex, active=False)
        return
    import mlflow

    experiment_id = ensure_experiment(section, home)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield JobRun(run.info.run_id, active=True)
