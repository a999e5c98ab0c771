"""Running a job through real ``spark-submit`` with the cached Delta jars and the job's Spark profile."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import batchscore
from batchscore.jobs.config import load_job_config, load_spark_profile
from batchscore.jobs.errors import ConfigError
from batchscore.jobs.home import batchscore_home, packaged_conf
from batchscore.jobs.jars import cached_delta_jars
from batchscore.jobs.launcher import LAUNCHER
from batchscore.jobs.session import DELTA_CONF, with_driver_java_options

SUBMITTABLE_JOBS = ("score", "shadow")
# Spark puts only these --py-files on the workers' sys.path (a .whl is a zip, but Spark skips it).
IMPORTABLE_PY_FILES = (".zip", ".egg", ".jar")
SUBMIT_OPTIONS = ("--master", "--py-files", "--archives")


def log4j_conf() -> Path:
    """Spark's log4j settings for the jobs we launch: WARN and above, so the job's own lines show."""
    return packaged_conf() / "spark" / "log4j2.properties"


def _option(args: Sequence[str], name: str) -> list[str]:
    """Every value of ``name`` in ``args`` (``--name v`` and ``--name=v``)."""
    values = []
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(f"{name}="):
            values.append(arg.split("=", 1)[1])
    return values


def _without(args: Sequence[str], name: str) -> list[str]:
    """``args`` without ``name`` and its value (``--name v`` and ``--name=v``)."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            kept.append(arg)
    return kept


def _is_local(master: str | None) -> bool:
    """Whether the driver's own process runs the tasks (``local``, ``local[N]``): nothing to ship."""
    return master is None or master == "local" or master.startswith("local[")


def shipped_package(destination: Path | None = None) -> Path:
    """The running ``batchscore`` package as a zip for ``--py-files``, so that executors import exactly
    the driver's code, not whatever their disk holds. Named by its content's hash: built once per change."""
    root = Path(batchscore.__file__).resolve().parent
    files = []
    # The repository's batchscore/ links to jobs/, udfs/…: walk the links, skip caches.
    for folder_name, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        files += [Path(folder_name) / name for name in sorted(names) if not name.endswith(".pyc")]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    folder = destination or batchscore_home() / "ship"
    target = folder / f"batchscore-{digest.hexdigest()[:16]}.zip"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, Path("batchscore") / path.relative_to(root))
        partial.replace(target)  # atomic: a concurrent submit never ships half a zip
    return target


def _importable(py_file: str, folder: Path) -> str:
    """``py_file`` in a form Spark puts on the workers' path: a wheel is shipped as a .zip copy."""
    path = Path(py_file)
    if path.suffix == ".whl":
        if not path.is_file():
            raise ConfigError(f"--py-files: expected a wheel file, found no file at {py_file}")
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / f"{path.stem}.zip"
        shutil.copyfile(path, copy)
        return str(copy)
    if path.suffix not in (*IMPORTABLE_PY_FILES, ".py"):
        raise ConfigError(
            f"--py-files: expected .zip, .egg, .jar, .py or .whl files, found {py_file!r} (Spark would ship "
            "it but never import from it)"
        )
    return py_file


def spark_submit_command(job: str, job_args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The spark-submit command line and environment that run ``batchscore <job> job_args`` (through
    :data:`jobs.launcher.LAUNCHER`). ``--master``, ``--py-files`` and ``--archives`` among ``job_args`` are
    spark-submit's; on a cluster master the running batchscore package is shipped with ``--py-files`` unless
    ``--no-ship`` says the executors' Python has it installed."""
    from pyspark.find_spark_home import _find_spark_home

    if job not in SUBMITTABLE_JOBS:
        raise ConfigError(f"expected a job among {list(SUBMITTABLE_JOBS)}, found {job!r}")
    given = {name: _option(job_args, name) for name in SUBMIT_OPTIONS}
    for name in SUBMIT_OPTIONS:
        job_args = _without(job_args, name)
    ship = "--no-ship" not in job_args
    job_args = [arg for arg in job_args if arg != "--no-ship"]
    masters = given["--master"]
    configs = _option(job_args, "--config")
    if not configs:
        raise ConfigError("expected --config <job.yaml> among the job's arguments, found none")
    cfg = load_job_config(configs[0], _option(job_args, "--set"))
    profile = load_spark_profile(cfg.spark.profile)
    spark_home = _find_spark_home()
    command = [str(Path(spark_home) / "bin" / "spark-submit")]
    # A master given here or in MASTER wins over the profile's default (which is for local runs).
    master = masters[-1] if masters else os.environ.get("MASTER") or profile.master
    if master:
        command += ["--master", master]
    ship_dir = batchscore_home() / "ship"
    py_files = [_importable(f, ship_dir) for value in given["--py-files"] for f in value.split(",") if f]
    if ship and not _is_local(master):
        py_files.insert(0, str(shipped_package(ship_dir)))
    if py_files:
        command += ["--py-files", ",".join(py_files)]
    if given["--archives"]:
        command += ["--archives", ",".join(given["--archives"])]
    # Spark's own INFO lines drown the job's progress lines; WARN and above still show.
    conf = with_driver_java_options(
        {**profile.conf, **cfg.spark.conf},
        f"-Dlog4j2.configurationFile={log4j_conf().as_uri()}",
    )
    if profile.delta:
        command += ["--jars", ",".join(cached_delta_jars())]
        conf.update(DELTA_CONF)
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    command += [str(LAUNCHER), job, *job_args]
    env = dict(os.environ)
    env.setdefault("SPARK_HOME", spark_home)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return command, env


def submit(job: str, job_args: Sequence[str]) -> int:
    """Run the job through spark-submit in a child process; returns its exit code."""
    command, env = spark_submit_command(job, job_args)
    return subprocess.run(command, env=env, check=False).returncode
