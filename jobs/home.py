"""Where the embedded local stack keeps its state: ``BATCHSCORE_HOME`` (default ``./.batchscore``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def batchscore_home() -> Path:
    """The state folder: ``$BATCHSCORE_HOME`` or ``.batchscore`` in the working directory, absolute."""
    return Path(os.environ.get("BATCHSCORE_HOME") or ".batchscore").expanduser().resolve()


def resolve_location(location: str, home: Path | None = None) -> str:
    """Resolve a configured path: URIs (``s3://``, ``dbfs:/``, ``file:``) and absolute paths are kept;
    a relative path is taken relative to the batchscore home, so configs work from any directory."""
    if _SCHEME.match(location) or os.path.isabs(location):
        return location
    return str((home or batchscore_home()) / location)


def default_tracking_uri(home: Path | None = None) -> str:
    """The embedded MLflow tracking and registry store: SQLite in the home folder."""
    return f"sqlite:///{(home or batchscore_home()) / 'mlflow.db'}"


def default_artifact_location(home: Path | None = None) -> str:
    """Where the embedded stack keeps MLflow artifacts (models, reports)."""
    return ((home or batchscore_home()) / "mlartifacts").as_uri()
