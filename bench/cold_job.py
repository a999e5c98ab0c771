"""Benchmark: the cold nightly job. Each run is a new process (a new JVM, new Python workers), as every
spark-submit is: our score job (Delta in, checks, quarantine, Delta out) against ``mlflow.pyfunc.spark_udf``
writing the same columns into Delta, at 100,000 and 1,000,000 rows of the bench's 32 doubles and MLP.

Our process runs the job twice: the first run is the cold job, the second the same job warm (the target:
the cold process, session start included, <= 2x the warm job). Its time is split into the session's start,
the job's model load in the workers (the slowest task's: device choice, torch's import, reading the
model), the scoring window (the first scored
batch to the last) and the rest of the job (Delta snapshot, planning, worker start and their imports, row
checks, quarantine and the output commit). Rounds alternate ours and spark_udf; the verdict is on the
median of the paired rounds. Writes bench/results/cold_job.json.

    python bench/cold_job.py [--rows 100000,1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

FILES_PER_MILLION = 4  # the main input's 40 files per 10 M rows


def _setup(rows: list[int]) -> tuple[str, dict[int, str]]:
    """The inputs and the registered model, made once in a session of their own (not timed)."""
    import bench as tabular
    from batchscore.jobs.home import batchscore_home, default_tracking_uri
    from batchscore.jobs.session import get_or_create_session

    home = batchscore_home()
    spark, _ = get_or_create_session("local", {"spark.ui.enabled": "false"})
    inputs = {}
    for n in rows:
        inputs[n] = str(home / "bench" / f"cold_input_{n}")
        tabular.ensure_input(spark, inputs[n], n, max(1, FILES_PER_MILLION * n // 1_000_000), 32)
    uri = tabular.ensure_model(default_tracking_uri(home), 32)
    spark.stop()
    return uri, inputs


def child(kind: str, uri: str, input_path: str, out: str) -> dict[str, Any]:
    """One cold process: ``ours`` (the job twice) or ``spark_udf`` (once); its timings."""
    started = time.time()
    import bench as tabular
    from batchscore.jobs.home import batchscore_home, default_tracking_uri
    from batchscore.jobs.runner import configure_logging
    from batchscore.jobs.session import get_or_create_session

    configure_logging("WARNING")
    spark, _ = get_or_create_session("local", {"spark.ui.enabled": "false"})
    session_s = time.time() - started
    report: dict[str, Any] = {"kind": kind, "session_s": session_s}
    if kind == "ours":
        from batchscore.jobs.score import run

        cfg = tabular.job_config("cold", uri, input_path, 2048, 2)
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": out})})
        for run_name in ("cold", "warm"):
            begun = time.time()
            result = run(spark, cfg, tabular.DS)
            job_s = time.time() - begun
            runtime = result.runtime
            report[run_name] = {
                "job_s": job_s,
                "rows": result.rows_scored,
                "model_load_s": runtime.get("model_load_s", 0.0),
                "scoring_window_s": runtime.get("scoring_window_s", 0.0),
            }
        report["cold"]["total_s"] = session_s + report["cold"]["job_s"]
    else:
        from batchscore.jobs.planning import Lineage
        from batchscore.jobs.registry import resolve_model

        tracking = default_tracking_uri(batchscore_home())
        df = spark.read.format("delta").load(input_path).where(f"ds = '{tabular.DS}'")
        lineage = Lineage.for_model(resolve_model(uri, tracking).ref, "cold")
        begun = time.time()
        tabular.delta_sink(out, lineage)(tabular.spark_udf_scores(df, uri, tabular.features(32), "double"))
        report["cold"] = {"job_s": time.time() - begun, "total_s": time.time() - started}
    spark.stop()
    return report


def run_child(kind: str, uri: str, input_path: str, out: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--uri", uri, "--input", input_path, "--out", out]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "cold_job.json"))
    parser.add_argument("--child", choices=("ours", "spark_udf"))
    parser.add_argument("--uri")
    parser.add_argument("--input")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("BATCHSCORE_HOME", str(ROOT / ".batchscore"))
    if args.child:
        print(json.dumps(child(args.child, args.uri, args.input, args.out)))
        return 0
    from batchscore.jobs.home import batchscore_home

    sizes = [int(n) for n in args.rows.split(",")]
    uri, inputs = _setup(sizes)
    out = batchscore_home() / "bench"
    results: dict[str, Any] = {}
    for n in sizes:
        rounds = []
        for index in range(args.rounds):
            order = ("ours", "spark_udf") if index % 2 == 0 else ("spark_udf", "ours")
            measured = {k: run_child(k, uri, inputs[n], str(out / f"cold_out_{k}_{n}")) for k in order}
            rounds.append(measured)
            ours, theirs = measured["ours"], measured["spark_udf"]
            print(
                f"{n:>9,} rows, round {index + 1}: ours cold {ours['cold']['total_s']:.1f} s (session "
                f"{ours['session_s']:.1f}, job {ours['cold']['job_s']:.1f}: model load "
                f"{ours['cold']['model_load_s']:.1f}, scoring {ours['cold']['scoring_window_s']:.1f}), "
                f"warm job {ours['warm']['job_s']:.1f} s; spark_udf cold {theirs['cold']['total_s']:.1f} s",
                flush=True,
            )
        ratio_anchor = [r["spark_udf"]["cold"]["total_s"] / r["ours"]["cold"]["total_s"] for r in rounds]
        cold_warm = [r["ours"]["cold"]["total_s"] / r["ours"]["warm"]["job_s"] for r in rounds]
        results[str(n)] = {"rounds": rounds, "spark_udf_over_ours": ratio_anchor, "cold_over_warm": cold_warm}
        print(
            f"{n:,} rows: spark_udf cold / ours cold, median {statistics.median(ratio_anchor):.2f}x "
            f"(target >= 1); our cold job / warm job, median {statistics.median(cold_warm):.2f}x "
            f"(target <= 2)\n",
            flush=True,
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"params": vars(args), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
