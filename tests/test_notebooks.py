"""Notebooks: the Jupyter walkthrough executed headless, the Databricks notebook as a script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATES, ROWS_PER_DAY, Registry

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_jupyter_walkthrough_runs_headless_on_the_demo_data(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "batch_scoring.ipynb", as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source += f"\nINPUT_PATH = {input_path!r}\nDS = {DATES[2]!r}\n"  # as papermill injects them
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    texts = [o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    images = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert any(f"rows scored: {ROWS_PER_DAY}" in t for t in texts), texts
    assert any("verdict: " in t for t in texts)
    assert any("figures shown: 3" in t for t in texts)
    assert len(images) >= 4, "the score histogram and the three comparison figures"


@pytest.mark.slow
def test_databricks_notebook_runs_as_a_script_on_local_spark(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    output = tmp_path / "scores"
    env = {
        **os.environ,
        "BATCHSCORE_INPUT_PATH": input_path,
        "BATCHSCORE_OUTPUT_PATH": str(output),
        "BATCHSCORE_DS": DATES[1],
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / "batch_scoring_databricks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"wrote {ROWS_PER_DAY} rows for ds={DATES[1]}" in proc.stdout
    assert "session: classic" in proc.stdout
    written = spark.read.format("delta").load(str(output)).toPandas()
    assert len(written) == ROWS_PER_DAY and set(written["model_version"]) == {registry.champion}
    source = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[1]}'").select("transaction_id")
    assert sorted(written["transaction_id"]) == sorted(r[0] for r in source.collect())
