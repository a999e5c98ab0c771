"""The package on every Python of ``python_requires`` (3.10-3.13): each interpreter this machine has
compiles every module and imports the ones that need nothing beyond the standard library. The rest of the
suite runs on the project's own Python; ``make lint`` and ``make typecheck`` check syntax and the standard
library's API for each version."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("3.10", "3.12", "3.13")  # 3.11 runs everything else
# Modules with no third-party import at module level: the CLI's front, names, errors, the Delta log reader,
# the executors' specs, stats and cache.
STDLIB_ONLY = (
    "batchscore.jobs.cli", "batchscore.jobs.names", "batchscore.jobs.errors", "batchscore.jobs.redact",
    "batchscore.jobs.delta_log", "batchscore.jobs.file_scan", "batchscore.jobs.home",
    "batchscore.udfs.spec", "batchscore.udfs.stats", "batchscore.udfs.model_cache", "batchscore.udfs.device",
)  # fmt: skip
PROBE = """
import os, sys
root = sys.argv[1]
compiled = 0
for folder, subfolders, names in os.walk(os.path.join(root, "batchscore"), followlinks=True):
    subfolders[:] = [d for d in subfolders if d != "__pycache__"]
    for name in names:
        if name.endswith(".py"):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as source:
                compile(source.read(), path, "exec")
            compiled += 1
import importlib
for module in sys.argv[2:]:
    importlib.import_module(module)
from batchscore.udfs import stats
one = stats.empty_stats()
one["rows"] = 7
total = stats.merged([stats.to_json(one), stats.to_json(one)])
print(compiled, tuple(sys.version_info[:2]), total["rows"])
"""


def _interpreter(version: str) -> str | None:
    """``python<version>`` from pyenv's installed versions or PATH (not pyenv's shims, which may refuse)."""
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates = sorted(pyenv.glob(f"{version}.*/bin/python{version}"))
    if candidates:
        return str(candidates[-1])
    found = shutil.which(f"python{version}")
    return found if found and "/shims/" not in found else None


@pytest.mark.parametrize("version", VERSIONS)
def test_the_package_compiles_and_imports_on(version: str, tmp_path: Path) -> None:
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no python{version} on this machine (PATH or pyenv): nothing to run the check with")
    proc = subprocess.run(
        [python, "-c", PROBE, str(ROOT), *STDLIB_ONLY],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"},
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled, *_ = proc.stdout.split()
    modules = sum(1 for _ in (ROOT / "jobs").rglob("*.py")) + sum(1 for _ in (ROOT / "udfs").rglob("*.py"))
    assert int(compiled) >= modules
    assert proc.stdout.split(maxsplit=1)[1].strip() == f"({version.replace('.', ', ')}) 14"
