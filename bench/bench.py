"""Benchmark: our scoring path vs mlflow spark_udf, pyspark predict_batch_udf, raw torch and a JVM scan.

Same input (a Delta table of N rows x 32 double features in ~40 files, one `ds` partition), same registered
torch model (MLP 32-128-64-1), same batch size. Prints a table of rows/s and peak Python-worker RSS, our ratio
to each anchor, and writes bench/results/latest.json.

    python bench/bench.py [--rows 10000000 | --quick]
                          [--paths ours,ours_delta,spark_udf,predict_batch_udf,torch,jvm]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
DS = "2026-01-01"
MODEL = "bench_mlp"


class WorkerRss:
    """Samples the RSS of Spark's Python worker processes while a path runs; keeps the largest."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "pyspark.daemon" in cmdline or "pyspark.worker" in cmdline:
                    self.peak_mb = max(self.peak_mb, proc.info["memory_info"].rss / 2**20)

    def __enter__(self) -> WorkerRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def features(n: int) -> list[str]:
    return [f"f{i}" for i in range(n)]


def ensure_input(spark: Any, path: str, rows: int, files: int, n_features: int) -> None:
    """Write the synthetic input once per size (a marker file records rows and files)."""
    from pyspark.sql import functions as F

    marker = Path(path) / "_bench_params.json"
    params = {"rows": rows, "files": files, "features": n_features}
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return
    df = spark.range(0, rows, numPartitions=files).select(
        F.col("id").alias("key"), *[F.rand(seed=i).alias(f) for i, f in enumerate(features(n_features))]
    )
    df.withColumn("ds", F.lit(DS)).write.format("delta").mode("overwrite").partitionBy("ds").save(path)
    marker.write_text(json.dumps(params))


def build_mlp(n_features: int) -> Any:
    """The benchmark model, MLP n-128-64-1 with a sigmoid: registered for the Spark paths, and the same
    architecture for the raw torch ceiling."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 1),
        torch.nn.Sigmoid(),
    ).eval()


def ensure_model(tracking_uri: str, n_features: int) -> str:
    """Register the MLP 32-128-64-1 once; returns its pinned models:/ URI."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{MODEL}'")
    except mlflow.exceptions.MlflowException:
        versions = []
    if versions:
        return f"models:/{MODEL}/{max(int(v.version) for v in versions)}"
    model = build_mlp(n_features)
    signature = ModelSignature(
        Schema([ColSpec("double", f) for f in features(n_features)]), Schema([ColSpec("double", "score")])
    )
    mlflow.set_experiment("batchscore-bench")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            registered_model_name=MODEL,
            serialization_format="pickle",
        )
    return f"models:/{MODEL}/{info.registered_model_version}"


def timed(run: Callable[[], None]) -> tuple[float, float]:
    with WorkerRss() as rss:
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    return seconds, rss.peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="1,000,000 rows")
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--prefetch", type=int, default=2, help="model.prefetch for our path")
    parser.add_argument("--paths", default="ours,ours_delta,spark_udf,predict_batch_udf,torch,jvm")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark conf")
    args = parser.parse_args()
    rows = 1_000_000 if args.quick else args.rows
    paths = args.paths.split(",")

    os.environ.setdefault("BATCHSCORE_HOME", str(ROOT / ".batchscore"))
    sys.path.insert(0, str(ROOT))
    from jobs.config import ScoringJobConfig
    from jobs.home import batchscore_home, default_tracking_uri
    from jobs.registry import resolve_model
    from jobs.score import Lineage, build_plan, configure_logging, run, score_input, stats_accumulator
    from jobs.session import get_or_create_session
    from jobs.tables import read_input
    from udfs.stats import summary_metrics

    configure_logging("WARNING")
    home = batchscore_home()
    extra = dict(item.split("=", 1) for item in args.conf)
    spark, _ = get_or_create_session("local", {"spark.ui.enabled": "false", **extra})
    input_path = str(home / "bench" / f"input_{rows}")
    ensure_input(spark, input_path, rows, args.files, args.features)
    tracking = default_tracking_uri(home)
    model_uri = ensure_model(tracking, args.features)
    cols = features(args.features)
    cfg = ScoringJobConfig.model_validate(
        {
            "name": "bench",
            "model": {
                "uri": model_uri,
                "batch_size": args.batch_size,
                "prediction_column": "score",
                "prefetch": args.prefetch,
            },
            "input": {"path": input_path},
            "output": {"path": str(home / "bench" / "out_ours"), "key_columns": ["key"]},
            "mlflow": {"experiment": "batchscore-bench", "log_run": False},
        }
    )
    df = spark.read.format("delta").load(input_path).where(f"ds = '{DS}'")
    results: dict[str, dict[str, float]] = {}

    def record(name: str, seconds: float, rss: float, extra: dict[str, Any] | None = None) -> None:
        results[name] = {
            "rows_per_s": rows / seconds,
            "seconds": seconds,
            "peak_rss_mb": rss,
            **(extra or {}),
        }
        print(
            f"  {name:<22} {rows / seconds:>12,.0f} rows/s  {seconds:7.1f} s  worker RSS {rss:7.0f} MB",
            flush=True,
        )

    if "ours" in paths:
        resolved = resolve_model(model_uri, tracking)
        plan = build_plan(resolved, cfg, df.columns)
        lineage = Lineage.for_model(resolved.ref, "bench")

        accumulators: list[Any] = []

        def ours() -> None:
            accumulators.append(stats_accumulator(spark))
            scored = score_input(
                spark,
                read_input(spark, cfg.input, DS),
                cfg,
                DS,
                (resolved.ref, plan),
                lineage=lineage,
                stats=accumulators[-1],
            )
            scored.write.format("noop").mode("overwrite").save()

        ours()  # warm: workers started, model resident (what a nightly job's later partitions see)
        seconds, rss = timed(ours)
        runtime = summary_metrics(accumulators[-1].value)
        record("ours (noop sink)", seconds, rss, {"runtime": runtime})
        print(
            "    stages: "
            + ", ".join(f"{k} {v:.2f}" for k, v in runtime.items() if k.endswith(("_total_s", "tasks")))
        )
    if "ours_delta" in paths:
        result_holder: list[Any] = []
        seconds, rss = timed(lambda: result_holder.append(run(spark, cfg, DS)))
        record("ours (Delta out)", seconds, rss, {"rows_written": result_holder[0].rows_scored})
    if "spark_udf" in paths:
        import mlflow

        udf = mlflow.pyfunc.spark_udf(spark, model_uri, env_manager="local", result_type="double")
        record(
            "mlflow spark_udf",
            *timed(
                lambda: (
                    df.select("key", udf(*cols).alias("score")).write.format("noop").mode("overwrite").save()
                )
            ),
        )
    if "predict_batch_udf" in paths:
        from pyspark.ml.functions import predict_batch_udf
        from pyspark.sql import functions as F
        from pyspark.sql.types import DoubleType

        def make_predict_fn(uri: str = model_uri, tracking_uri: str = tracking) -> Callable[[Any], Any]:
            import mlflow
            import mlflow.pytorch
            import torch

            mlflow.set_tracking_uri(tracking_uri)
            model = mlflow.pytorch.load_model(uri).eval()

            def predict(inputs: Any) -> Any:
                with torch.inference_mode():
                    return (
                        model(torch.from_numpy(inputs.astype("float32")))
                        .numpy()
                        .reshape(-1)
                        .astype("float64")
                    )

            return predict

        pudf = predict_batch_udf(
            make_predict_fn,
            return_type=DoubleType(),
            batch_size=args.batch_size,
            input_tensor_shapes=[[args.features]],
        )
        record(
            "predict_batch_udf",
            *timed(
                lambda: (
                    df.select("key", pudf(F.array(*cols)).alias("score"))
                    .write.format("noop")
                    .mode("overwrite")
                    .save()
                )
            ),
        )
    if "torch" in paths:
        import numpy as np
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        model = build_mlp(args.features)
        sample = min(rows, 4_000_000)
        x = torch.from_numpy(np.random.default_rng(0).random((sample, args.features), dtype=np.float32))
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, sample, args.batch_size):
                model(x[start : start + args.batch_size]).numpy()
        seconds = (time.perf_counter() - started) * rows / sample
        record("raw torch (ceiling)", seconds, 0.0, {"threads": torch.get_num_threads()})
    if "jvm" in paths:
        expression = " + ".join(cols)
        record(
            "JVM scan (I/O ceiling)",
            *timed(
                lambda: (
                    df.selectExpr("key", f"{expression} AS s").write.format("noop").mode("overwrite").save()
                )
            ),
        )

    ours = results.get("ours (noop sink)", {}).get("rows_per_s")
    if ours:
        print("\n| path | rows/s | peak worker RSS MB | ours / path |\n|---|---|---|---|")
        for name, r in results.items():
            print(
                f"| {name} | {r['rows_per_s']:,.0f} | {r['peak_rss_mb']:.0f} "
                f"| {ours / r['rows_per_s']:.2f}x |"
            )
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": {
            "rows": rows,
            "files": args.files,
            "features": args.features,
            "batch_size": args.batch_size,
            "model": "MLP 32-128-64-1",
            "command": " ".join(sys.argv),
        },
        "paths": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
