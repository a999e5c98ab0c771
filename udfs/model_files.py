"""Loading a pinned torch model straight from its files, without importing mlflow in the worker.

``mlflow.pytorch.load_model`` costs a worker about a second and a half of imports before it reads a byte
of the model, then asks the registry where the version's files are and copies them. When the driver's
resolution (:class:`udfs.spec.ModelRef.artifact_uri`) names files this host can already read (a local
``file:`` store, as the embedded default has, or a shared filesystem), a worker reads the model's
``MLmodel`` and loads its ``data/model.pth`` exactly as ``mlflow.pytorch`` does: ``torch.load`` with the
pickle module named beside the model, ``map_location`` the device, then ``eval()`` and ``to(device)``.

Anything else goes through mlflow as before (:func:`local_model` answers ``None``): files elsewhere (an
object store, an ``mlflow-artifacts:`` proxy), models with a ``code`` path, models saved by
``torch.export`` (``model.pt2``, whose device checks mlflow makes), and workers where
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` forbids pickle.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from batchscore.udfs.spec import ModelRef

log = logging.getLogger(__name__)

# The module mlflow saves torch models with: cloudpickle under mlflow's name. What cloudpickle writes, the
# standard unpickler reads (its helpers are imported by reference), so the worker needs no mlflow for it.
_MLFLOW_PICKLE = "mlflow.pytorch.pickle_module"


def _local_folder(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def _pickle_allowed() -> bool:
    """mlflow's own switch (default: allowed); when it forbids pickle, mlflow's loader explains why."""
    value = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true").strip().lower()
    return value in ("true", "1")


def local_model(ref: ModelRef) -> Path | None:
    """The data file of ``ref``'s torch model when this host can read it and load it without mlflow."""
    folder = _local_folder(ref.artifact_uri)
    if folder is None or not _pickle_allowed():
        return None
    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text())
        flavor = meta["flavors"]["pytorch"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None  # not here, or not a torch model mlflow wrote: mlflow's loader says what is wrong
    if flavor.get("code") or not flavor.get("model_data"):
        return None
    data = folder / str(flavor["model_data"])
    weights = data / "model.pth" if data.is_dir() else data
    return weights if weights.is_file() else None


def _pickle_module(weights: Path) -> Any:
    info = weights.parent / "pickle_module_info.txt"
    name = info.read_text().strip() if info.is_file() else "pickle"
    return pickle if name in (_MLFLOW_PICKLE, "pickle", "cloudpickle") else importlib.import_module(name)


def load_local_torch(weights: Path, device: str) -> Any:
    """The module in ``weights`` (a ``model.pth`` of :func:`local_model`), in eval mode on ``device``."""
    import torch

    module = torch.load(
        str(weights), map_location=device, pickle_module=_pickle_module(weights), weights_only=False
    )
    module.eval()
    module.to(device=device)
    return module
