"""Running a job through real ``spark-submit`` with the cached Delta jars and the job's Spark profile."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from batchscore.jobs.config import CONF_DIR, load_job_config, load_spark_profile
from batchscore.jobs.errors import ConfigError
from batchscore.jobs.jars import cached_delta_jars
from batchscore.jobs.launcher import LAUNCHER
from batchscore.jobs.session import DELTA_CONF, with_driver_java_options

SUBMITTABLE_JOBS = ("score", "shadow")
LOG4J_CONF = CONF_DIR / "spark" / "log4j2.properties"


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


def spark_submit_command(job: str, job_args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The spark-submit command line and environment that run ``batchscore <job> job_args`` (through
    :data:`jobs.launcher.LAUNCHER`); ``--master URL`` among ``job_args`` is spark-submit's."""
    from pyspark.find_spark_home import _find_spark_home

    if job not in SUBMITTABLE_JOBS:
        raise ConfigError(f"expected a job among {list(SUBMITTABLE_JOBS)}, found {job!r}")
    masters = _option(job_args, "--master")
    job_args = _without(job_args, "--master")
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
    # Spark's own INFO lines drown the job's progress lines; WARN and above still show.
    conf = with_driver_java_options(
        {**profile.conf, **cfg.spark.conf}, f"-Dlog4j2.configurationFile={LOG4J_CONF.as_uri()}"
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
