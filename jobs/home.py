"""Where the embedded local stack keeps its state: ``BATCHSCORE_HOME`` (default ``./.batchscore``)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from functools import cache
from importlib import resources
from importlib.abc import Traversable
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


def _files(folder: Traversable, prefix: str = "") -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            found |= _files(entry, f"{prefix}{entry.name}/")
        elif entry.is_file():
            found[prefix + entry.name] = entry.read_bytes()
    return found


@cache
def packaged_conf() -> Path:
    """The default ``conf/`` the package carries (job configs, Spark profiles, DAG configs) as a folder.

    Installed or in the repository it is the package's own folder. Imported from a zip (spark-submit's
    ``--py-files`` puts the shipped package first on the driver's path too) its files are unpacked once
    into ``$BATCHSCORE_HOME/conf/<content hash>``, so profiles and scripts are files like any other.
    """
    packaged = resources.files("batchscore") / "conf"
    if isinstance(packaged, Path):
        return packaged.resolve()
    files = _files(packaged)
    digest = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in sorted(files.items())))
    target = batchscore_home() / "conf" / digest.hexdigest()[:16]
    if not target.is_dir():
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        shutil.rmtree(partial, ignore_errors=True)
        for name, data in files.items():
            (partial / name).parent.mkdir(parents=True, exist_ok=True)
            (partial / name).write_bytes(data)
        try:
            partial.rename(target)  # atomic; a concurrent run that won the race left the same files
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
    return target
