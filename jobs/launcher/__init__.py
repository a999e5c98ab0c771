"""The file spark-submit runs (:data:`LAUNCHER`), alone in this folder so that nothing shadows a package."""

from __future__ import annotations

from pathlib import Path

LAUNCHER = Path(__file__).resolve().parent / "batchscore_job.py"
