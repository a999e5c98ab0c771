"""Workers load a pinned torch model from files this host can read without importing mlflow, exactly as
``mlflow.pytorch.load_model`` would; anything else still goes through mlflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batchscore.udfs.model_files import local_model
from batchscore.udfs.spec import ModelRef

ROOT = Path(__file__).resolve().parent.parent


def _ref(folder: Path | str) -> ModelRef:
    uri = folder if isinstance(folder, str) else folder.as_uri()
    return ModelRef("m", "models:/m/1", "m", "1", None, uri, "pytorch", "sqlite://", "sqlite://")


def _saved(tmp_path: Path, **options) -> tuple[Path, torch.nn.Module]:
    import mlflow.pytorch

    torch.manual_seed(5)
    module = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.GELU(), torch.nn.Linear(8, 2)
    )
    folder = tmp_path / "model"
    mlflow.pytorch.save_model(module.eval(), str(folder), **options)
    return folder, module


def test_a_local_model_loads_without_mlflow_and_scores_as_mlflows_load(tmp_path: Path) -> None:
    import mlflow.pytorch

    folder, _ = _saved(tmp_path, serialization_format="pickle")
    x = np.random.default_rng(0).standard_normal((16, 6), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = f"""
import json, sys
import numpy as np, torch
from batchscore.udfs.predictors import load_torch_module
from batchscore.udfs.spec import ModelRef
ref = ModelRef("m", "models:/m/1", "m", "1", None, {folder.as_uri()!r}, "pytorch", "sqlite://", "sqlite://")
module = load_torch_module(ref, "cpu")
with torch.inference_mode():
    out = module(torch.from_numpy(np.load({str(tmp_path / "x.npy")!r}))).numpy()
print(json.dumps({{"mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow"),
                  "training": module.training, "out": out.tolist()}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["mlflow"] == [], "a worker with the files at hand imports no mlflow"
    assert got["training"] is False
    expected = mlflow.pytorch.load_model(str(folder))
    with torch.inference_mode():
        np.testing.assert_array_equal(
            np.asarray(got["out"], dtype=np.float32), expected(torch.from_numpy(x)).numpy()
        )


def test_what_mlflow_must_load_is_left_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, module = _saved(tmp_path, serialization_format="pickle")
    assert local_model(_ref(folder)) == folder / "data" / "model.pth"
    assert local_model(_ref(str(folder))) == folder / "data" / "model.pth"  # a plain path
    assert local_model(_ref("s3://bucket/models/m/1")) is None
    assert local_model(_ref("mlflow-artifacts:/1/models/m-1/artifacts")) is None
    assert local_model(_ref(tmp_path / "not-there")) is None  # the driver's disk, not this host's
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    assert local_model(_ref(folder)) is None, "mlflow refuses, and says why"
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    # torch.export models (mlflow checks their devices) and models with code paths
    import mlflow.pytorch

    exported = tmp_path / "pt2"
    mlflow.pytorch.save_model(
        module, str(exported), serialization_format="pt2", input_example=np.zeros((2, 6), np.float32)
    )
    assert local_model(_ref(exported)) is None
    code = tmp_path / "helper.py"
    code.write_text("X = 1\n")
    with_code = tmp_path / "with_code"
    mlflow.pytorch.save_model(module, str(with_code), serialization_format="pickle", code_paths=[str(code)])
    assert local_model(_ref(with_code)) is None
    assert os.path.isdir(with_code / "code")
