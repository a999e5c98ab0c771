"""Worker memory under a serverless UDF limit: the job as configured, each Python worker capped at 1 GiB.

Databricks serverless stops a Python UDF whose memory passes 1 GB (``UDF_PYSPARK_USER_CODE_ERROR.
MEMORY_LIMIT_SERVERLESS``) and gives a job no say over its workers' environment (no ``spark.executorEnv``).
This runs ``batchscore score`` as a subprocess on the bench's tabular input with the job's defaults and
``quality.hold: stage`` (what ``auto`` picks over Connect), in a profile like ``local`` without any
``spark.executorEnv``, once per read mode (``files``: tasks read the Parquet files; ``dataframe``: Spark reads
them, as on Databricks). Each Python worker runs in a memory cgroup of its own, limited to ``--limit-mib``,
when this machine lets us create one (root and a writable cgroup v1 or v2 memory controller), so a worker
over the limit is killed by the kernel and the job fails; either way every worker's peak RSS and anonymous
memory are sampled from /proc. Prints one table and whether the target held (every job completed with
each worker under the enforced limit; without cgroups, every worker's RSS under it); writes
bench/results/worker_memory.json.

    python bench/worker_memory.py [--rows 4000000] [--files 8] [--limit-mib 1024]
                                  [--read-modes files,dataframe]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import bench as tabular  # noqa: E402  (bench/bench.py: its input and model)

WRAPPER = """#!/bin/sh
# One memory cgroup per Python worker, limited like a serverless UDF; then the worker itself.
cg="{parent}/batchscore-udf-$$"
mkdir "$cg" && echo {limit} > "$cg/{limit_file}" && echo $$ > "$cg/cgroup.procs" || exit 97
exec {python} "$@"
"""


def memory_cgroup_parent() -> tuple[Path, str, str] | None:
    """This process's memory cgroup directory and the names of its limit and peak files (v1 or v2), when
    child cgroups can be made in it; else None."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            files = ("memory.limit_in_bytes", "memory.max_usage_in_bytes")
        elif controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            candidate = Path("/sys/fs/cgroup") / path.lstrip("/")
            files = ("memory.max", "memory.peak")
        else:
            continue
        probe = candidate / f"batchscore-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError:
            return None
        return candidate, *files
    return None


PARTS = ("anon", "cuda_libs", "parquet", "other_files")


def memory_parts(pid: int) -> dict[str, float]:
    """A process's resident memory in MiB by kind, from /proc/<pid>/smaps: ``anon`` (heap, stacks and
    anonymous maps: what the process itself allocated), ``cuda_libs`` (code and data pages of the CUDA
    libraries a CUDA build of torch loads even without a GPU), ``parquet`` (memory-mapped input files) and
    ``other_files`` (every other mapped file: Python, torch's CPU library, pyarrow…). File pages are shared
    and the kernel may drop them; anonymous ones are the worker's own."""
    parts = dict.fromkeys(PARTS, 0.0)
    kind = "anon"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            field = line.split()
            if not field[0].endswith(":"):  # a mapping's header: address perms offset dev inode [path]
                path = field[5] if len(field) > 5 else ""
                if not path or path.startswith("["):
                    kind = "anon"
                elif "/nvidia/" in path or "_cuda" in path or "cudnn" in path:
                    kind = "cuda_libs"
                elif path.endswith(".parquet"):
                    kind = "parquet"
                else:
                    kind = "other_files"
            elif field[0] == "Rss:":
                parts[kind] += int(field[1]) / 1024
    return parts


class Workers:
    """Samples the resident memory of the Python worker processes of one job (the descendants of its
    process ``job``) every 0.2 s: RSS by kind (:func:`memory_parts`) and anonymous memory (RssAnon); keeps
    each process's peak."""

    def __init__(self, job: int) -> None:
        self.job = psutil.Process(job)
        self.peaks: dict[int, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            workers = {}
            for proc in self.job.children(recursive=True):
                try:
                    if "pyspark.worker" in proc.cmdline():
                        workers[proc.pid] = proc.ppid()
                except psutil.Error:  # gone while it was listed
                    continue
            for pid, parent in workers.items():
                if parent in workers:
                    continue  # a worker's fork about to exec a helper: its RSS is its parent's pages
                try:
                    self._take(pid)
                except (OSError, ValueError):  # the worker ended while it was read
                    continue

    def _take(self, pid: int) -> None:
        """One reading of a live worker: its smaps (RSS by kind) and RssAnon, kept where they are its
        largest. A worker that starts exiting before or while it is read is left out: its memory is being
        torn down, and the CUDA libraries' static destructors page in code (up to ~100 MiB of file pages)
        that a scoring worker never runs."""
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.read_bytes():
            return
        parts = memory_parts(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        if not cmdline.read_bytes():
            return
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = sum(parts.values())
        peak = self.peaks.setdefault(pid, {"rss_mib": 0.0, "anon_mib": 0.0, "parts": {}})
        if rss > peak["rss_mib"]:
            peak["rss_mib"], peak["parts"] = rss, parts
        peak["anon_mib"] = max(peak["anon_mib"], int(fields["RssAnon"].split()[0]) / 1024)

    def largest(self) -> dict[str, Any]:
        """The peak of the worker with the largest RSS (zeros when none ran)."""
        return max(self.peaks.values(), key=lambda p: p["rss_mib"], default={"rss_mib": 0.0, "parts": {}})

    def __enter__(self) -> Workers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def serverless_profile(path: Path) -> Path:
    """The ``local`` profile without ``spark.executorEnv.*`` (a serverless job cannot set its workers'
    environment) and with one process per Python worker, so that each gets a cgroup of its own."""
    profile = yaml.safe_load((ROOT / "conf" / "spark" / "local.yaml").read_text())
    conf = {k: v for k, v in profile["conf"].items() if not k.startswith("spark.executorEnv.")}
    conf["spark.python.use.daemon"] = "false"
    profile.update(master="local[2]", conf=conf)
    path.write_text(yaml.safe_dump(profile))
    return path


def job_config(path: Path, model_uri: str, input_path: str, read_mode: str, home: Path) -> Path:
    """The job as a user configures it: our defaults (batch size, prefetch, kernels) and the Databricks
    job's batch size; only the tables, the model and the staging hold are set."""
    databricks = yaml.safe_load((ROOT / "conf" / "jobs" / "fraud_databricks.yaml").read_text())
    config = {
        "name": f"worker_memory_{read_mode}",
        "model": {"uri": model_uri, "batch_size": databricks["model"]["batch_size"]},
        "input": {"path": input_path, "partition_column": "ds", "read_mode": read_mode},
        "output": {
            "path": str(home / "bench" / f"worker_memory_out_{read_mode}"),
            "partition_column": "ds",
            "key_columns": ["key"],
        },
        "quality": {"hold": "stage"},
        "mlflow": {"experiment": "batchscore-bench", "log_run": False},
        "spark": {"profile": str(serverless_profile(path.parent / "serverless.yaml"))},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def remove_cgroup(cgroup: Path) -> None:
    """Remove an emptied worker cgroup; a worker Spark is still stopping may hold it for a moment."""
    for _ in range(50):
        try:
            cgroup.rmdir()
            return
        except OSError:
            time.sleep(0.2)
    print(f"left {cgroup} behind: a process is still in it")


def run_job(
    config: Path, env: dict[str, str], cgroups: tuple[Path, str, str] | None, log: Path
) -> dict[str, Any]:
    """One ``batchscore score`` run; its exit code, seconds, and the peaks of its Python workers. A failed
    run's output goes to ``log``."""
    before = set(cgroups[0].glob("batchscore-udf-*")) if cgroups else set()
    started = time.perf_counter()
    command = [sys.executable, "-m", "batchscore.jobs.cli", "score", "--config", str(config)]
    with (
        subprocess.Popen(
            [*command, "--ds", tabular.DS], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as job,
        Workers(job.pid) as workers,
    ):
        stdout, stderr = job.communicate()
    result: dict[str, Any] = {
        "rc": job.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "workers": len(workers.peaks),
        "peak_rss_mib": round(max((p["rss_mib"] for p in workers.peaks.values()), default=0.0)),
        "peak_anon_mib": round(max((p["anon_mib"] for p in workers.peaks.values()), default=0.0)),
        "largest_worker_mib": {k: round(v) for k, v in workers.largest()["parts"].items()},
    }
    if job.returncode != 0:
        output = (stdout + stderr).splitlines()
        result["error"] = [line for line in output if "ERROR batchscore" in line][-3:] or output[-20:]
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(stdout + stderr)
        result["log"] = str(log)
    if cgroups:
        made = sorted(set(cgroups[0].glob("batchscore-udf-*")) - before)
        usage = []
        for cgroup in made:
            usage.append(int((cgroup / cgroups[2]).read_text()) / 2**20)
            failures = cgroup / "memory.failcnt"
            if failures.exists():
                result["limit_hits"] = result.get("limit_hits", 0) + int(failures.read_text())
            remove_cgroup(cgroup)
        result["cgroups"] = len(made)
        result["peak_cgroup_mib"] = round(max(usage, default=0.0))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--files", type=int, default=8, help="input files (one row group each)")
    parser.add_argument("--limit-mib", type=int, default=1024, help="each Python worker's memory limit")
    parser.add_argument("--read-modes", default="files,dataframe")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "worker_memory.json"))
    args = parser.parse_args()

    os.environ.setdefault("BATCHSCORE_HOME", str(ROOT / ".batchscore"))
    from batchscore.jobs.home import batchscore_home, default_tracking_uri
    from batchscore.jobs.session import get_or_create_session

    home = batchscore_home()
    tracking = default_tracking_uri(home)
    input_path = str(home / "bench" / f"worker_memory_input_{args.rows}_{args.files}")
    spark, _ = get_or_create_session("local", {"spark.ui.enabled": "false"})
    tabular.ensure_input(spark, input_path, args.rows, args.files, 32)
    spark.stop()
    model_uri = tabular.ensure_model(tracking, 32)

    cgroups = memory_cgroup_parent()
    work = Path(tempfile.mkdtemp(prefix="batchscore-worker-memory-"))
    python = sys.executable
    if cgroups:
        wrapper = work / "python-in-cgroup"
        wrapper.write_text(
            WRAPPER.format(
                parent=cgroups[0], limit=args.limit_mib << 20, limit_file=cgroups[1], python=python
            )
        )
        wrapper.chmod(0o755)
        python = str(wrapper)
    else:
        print("no memory cgroup can be made here: peaks are sampled, the limit is not enforced")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JE_ARROW")}
    env.update(PYSPARK_PYTHON=python, BATCHSCORE_HOME=str(home))
    results = {}
    try:
        for mode in args.read_modes.split(","):
            config = job_config(work / f"{mode}.yaml", model_uri, input_path, mode, home)
            log = Path(args.json).with_name(f"worker_memory_{mode}.log")
            results[mode] = run_job(config, env, cgroups, log)
            print(mode, json.dumps(results[mode]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    limit = args.limit_mib
    under = "completed under the limit" if cgroups else "completed (limit not enforced)"
    print(
        f"\n| read mode | job rc: {under} | workers | peak RSS MiB | peak anon MiB | peak cgroup MiB "
        f"| largest worker: anon / CUDA libs / parquet maps / other files MiB | RSS < {limit} MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        parts = " / ".join(str(r["largest_worker_mib"].get(k, 0)) for k in PARTS)
        print(
            f"| {mode} | {r['rc']} | {r['workers']} | {r['peak_rss_mib']} | {r['peak_anon_mib']} "
            f"| {r.get('peak_cgroup_mib', '-')} | {parts} | {'yes' if r['peak_rss_mib'] < limit else 'no'} |"
        )
    report = {
        "rows": args.rows,
        "files": args.files,
        "limit_mib": limit,
        "enforced": cgroups is not None,
        "results": results,
        "machine": {"cpu": tabular.cpu_model(), "python": sys.version.split()[0]},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    # The target: every job completes with each worker under the kernel-enforced limit; where no cgroup
    # can be made, every worker's RSS under it.
    held = [r["rc"] == 0 and (cgroups is not None or r["peak_rss_mib"] < limit) for r in results.values()]
    print("target (each worker under the limit):", "held" if all(held) else "MISSED")
    return 0 if all(held) else 1


if __name__ == "__main__":
    sys.exit(main())
