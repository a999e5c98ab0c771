"""GPU check of the executor-side scoring loop, without Spark or MLflow.

Drives ``udfs.runtime.ScoringLoop`` with Arrow record batches the way a Spark task does (an
``array<float>`` image column as Spark sends it, GPU addresses as Spark's task resources give them) and
prints a table:

1. the device the model is resident on for each assigned GPU address (loaded once through the model cache);
2. throughput of the loop vs raw torch on the same GPU, model, batch size and precision, for a ResNet-50
   style CNN on 3x224x224 images (random weights, built in code); target: loop >= 90% of raw torch;
3. a real CUDA out-of-memory, provoked by capping this process's share of GPU memory with
   ``torch.cuda.set_per_process_memory_fraction`` (the card's settings are not touched), recovered by the
   loop's batch-halving back-off.

Runs on CPU too (``--quick``), with small images, to check the script itself.

    python3 bench/gpu_check.py [--quick] [--rows 4096] [--batch-size 256] [--autocast bf16] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from batchscore.udfs import model_cache
from batchscore.udfs.device import TaskResources, choose_device
from batchscore.udfs.predictors import TorchPredictor
from batchscore.udfs.runtime import ScoringLoop
from batchscore.udfs.spec import OutputField, ScoringPlan
from batchscore.udfs.stats import empty_stats, summary_metrics


class Bottleneck(nn.Module):
    def __init__(self, inp: int, mid: int, stride: int) -> None:
        super().__init__()
        out = mid * 4
        self.body = nn.Sequential(
            nn.Conv2d(inp, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and inp == out
            else nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet(width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3), classes: int = 1000) -> nn.Module:
    """ResNet-50's layout (bottlenecks 3-4-6-3) at a given base width; random weights."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, 2, 3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    inp = width
    for stage, count in enumerate(blocks):
        mid = width * 2**stage
        for i in range(count):
            layers.append(Bottleneck(inp, mid, 2 if i == 0 and stage > 0 else 1))
            inp = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inp, classes), nn.Softmax(dim=1)]
    return nn.Sequential(*layers).eval()


def image_batches(rows: int, size: int, arrow_rows: int) -> tuple[list[pa.RecordBatch], np.ndarray]:
    """Images as Spark sends an ``array<float>`` column: a list array over one float32 buffer."""
    values = np.random.default_rng(0).standard_normal(rows * 3 * size * size, dtype=np.float32)
    per_row = 3 * size * size
    batches = []
    for start in range(0, rows, arrow_rows):
        n = min(arrow_rows, rows - start)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_row)
        images = pa.ListArray.from_arrays(offsets, pa.array(values[start * per_row : (start + n) * per_row]))
        ids = pa.array(np.arange(start, start + n, dtype=np.int64))
        batches.append(pa.RecordBatch.from_arrays([ids, images], names=["id", "image"]))
    return batches, values.reshape(rows, 3, size, size)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def raw_torch(model: nn.Module, images: np.ndarray, batch: int, device: str, autocast: str | None) -> float:
    """Rows/s of a plain loop: host tensor slice -> device -> model -> host, same batch and precision."""
    host = torch.from_numpy(images)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    sync(device)
    started = time.perf_counter()
    with (
        torch.inference_mode(),
        torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        for start in range(0, len(host), batch):
            out = model(host[start : start + batch].to(device))
            out.float().cpu()
    sync(device)
    return len(host) / (time.perf_counter() - started)


def scoring_loop(
    predictor: TorchPredictor, batches: list[pa.RecordBatch], plan: ScoringPlan
) -> tuple[float, dict[str, Any], int]:
    stats = empty_stats()
    sync(predictor.device)
    started = time.perf_counter()
    loop = ScoringLoop(predictor, plan, stats)
    rows = sum(b.num_rows for b in loop.run(iter(batches)))
    sync(predictor.device)
    return rows / (time.perf_counter() - started), stats, loop.chunk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small images and model: checks the script on CPU"
    )
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--arrow-rows", type=int, default=1000, help="Arrow maxRecordsPerBatch to mimic")
    parser.add_argument("--autocast", choices=["bf16", "fp16", "none"], default="bf16")
    parser.add_argument("--addresses", default=None, help="GPU addresses as Spark assigns them, e.g. 0,1")
    parser.add_argument("--oom-fraction", type=float, default=0.01, help="GPU memory share for the OOM check")
    parser.add_argument("--json", default=os.environ.get("OUT", "bench/results") + "/gpu_check.json")
    args = parser.parse_args()

    size, width = (32, 8) if args.quick else (224, 64)
    rows = min(args.rows, 256) if args.quick else args.rows
    autocast = None if args.autocast == "none" else args.autocast
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    addresses = (args.addresses or ",".join(str(i) for i in range(cuda))).split(",") if cuda else []
    torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        },
        "params": {
            "rows": rows,
            "image": [3, size, size],
            "width": width,
            "batch_size": args.batch_size,
            "arrow_rows": args.arrow_rows,
            "autocast": autocast,
        },
    }
    print(f"# gpu_check: {report['machine']} {report['params']}")

    # 1. Device pinning: each task GPU address -> the resident model's device, loaded once per address.
    print("\n| task GPU address | chosen device | model parameters on | loads |")
    print("|---|---|---|---|")
    placements = []
    base = resnet(width)
    for address in addresses or [None]:
        task = TaskResources((address,) if address is not None else (), cpus=os.cpu_count() or 1)
        choice = choose_device("auto", task, cuda)
        for _ in range(3):  # three "tasks" on the same worker: one load
            model = model_cache.get_or_load(("gpu_check", choice.device), lambda d=choice.device: base.to(d))
        param_device = str(next(model.parameters()).device)
        placements.append({"address": address, "device": choice.device, "param_device": param_device})
        print(f"| {address} | {choice.device} | {param_device} | {model_cache.load_count()} |")
    report["placements"] = placements
    device = placements[0]["device"]
    model = model_cache.get_or_load(("gpu_check", device), lambda: base.to(device))

    # 2. Throughput: loop vs raw torch on the same device, model, batch size and precision.
    batches, images = image_batches(rows, size, args.arrow_rows)
    plan = ScoringPlan(
        feature_columns=("image",),
        passthrough_columns=("id",),
        outputs=(OutputField("probs", "float32", "vector"),),
        batch_size=args.batch_size,
        row_shape=(3, size, size),
        autocast=autocast,
        prefetch=2,
    )
    predictor = TorchPredictor(model, device, plan.feature_columns, plan.row_shape, autocast)
    warm = max(1, min(len(images), args.batch_size * 2))
    raw_torch(model, images[:warm], args.batch_size, device, autocast)
    scoring_loop(predictor, image_batches(warm, size, args.arrow_rows)[0], plan)
    raw = max(raw_torch(model, images, args.batch_size, device, autocast) for _ in range(2))
    loop_runs = [scoring_loop(predictor, batches, plan) for _ in range(2)]
    ours, stats, _ = max(loop_runs, key=lambda r: r[0])
    ratio = ours / raw
    metrics = summary_metrics(stats)
    report["throughput"] = {
        "raw_torch_rows_per_s": raw,
        "loop_rows_per_s": ours,
        "ratio": ratio,
        "loop": metrics,
    }
    print("\n| path | rows/s | vs raw torch |")
    print("|---|---|---|")
    print(f"| raw torch (host tensor -> {device} -> host) | {raw:,.0f} | 100% |")
    print(f"| batchscore loop (Arrow -> {device} -> Arrow) | {ours:,.0f} | {ratio:.0%} |")
    print(
        f"loop stages per batch: decode {metrics['decode_mean_ms']:.1f} ms (prefetch thread), "
        f"compute {metrics['compute_mean_ms']:.1f} ms, encode {metrics['encode_mean_ms']:.1f} ms; "
        f"p50 {metrics['batch_latency_p50_ms']:.1f} ms, p99 {metrics['batch_latency_p99_ms']:.1f} ms"
    )

    # 3. A real CUDA out-of-memory, recovered by halving the batch.
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(args.oom_fraction, index)
        cap_gb = args.oom_fraction * torch.cuda.get_device_properties(index).total_memory / 2**30
        big = dataclasses.replace(plan, batch_size=1024, prefetch=0)
        oom_rows = min(rows, 2048)
        try:
            _, oom_stats, final_chunk = scoring_loop(predictor, image_batches(oom_rows, size, 1024)[0], big)
            recovered = oom_stats["rows"] == oom_rows and oom_stats["oom_backoffs"] > 0
            report["oom"] = {
                "cap_gb": cap_gb,
                "start_batch": 1024,
                "final_batch": final_chunk,
                "backoffs": oom_stats["oom_backoffs"],
                "rows": oom_stats["rows"],
                "recovered": recovered,
            }
        except Exception as exc:  # reported, not hidden: the check fails below
            report["oom"] = {"cap_gb": cap_gb, "error": f"{type(exc).__name__}: {exc}", "recovered": False}
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, index)
        print(f"\nOOM check (memory capped at {cap_gb:.1f} GiB): {report['oom']}")
    else:
        report["oom"] = {"skipped": "no CUDA device: the back-off is tested on CPU by tests/test_runtime.py"}
        print(f"\nOOM check: {report['oom']['skipped']}")

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.json}")
    ok = ratio >= 0.9 or not device.startswith("cuda")
    ok = ok and bool(report["oom"].get("recovered", True))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
