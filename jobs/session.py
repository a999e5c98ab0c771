"""The SparkSession factory: reuse the session a notebook or Databricks already has, else build one.

A session we did not create is never stopped. A new one comes from a named profile in ``conf/spark/``; with
``delta: true`` the profile gets Delta's SQL extensions and the jars cached by ``batchscore setup``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from batchscore.jobs.config import SparkProfile, load_spark_profile
from batchscore.jobs.errors import DeltaJarsMissingError
from batchscore.jobs.jars import cached_delta_jars

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def with_driver_java_options(conf: Mapping[str, str], *options: str) -> dict[str, str]:
    """``conf`` with ``options`` appended to ``spark.driver.extraJavaOptions`` (spark-submit's
    ``--driver-java-options`` would replace the profile's instead)."""
    merged = dict(conf)
    current = merged.get("spark.driver.extraJavaOptions", "").split()
    merged["spark.driver.extraJavaOptions"] = " ".join([*current, *(o for o in options if o not in current)])
    return merged


def session_conf(profile: SparkProfile, extra: Mapping[str, str], home: Path | None = None) -> dict[str, str]:
    """Every setting a new session gets from ``profile`` and the job's own ``spark.conf``."""
    conf = dict(profile.conf)
    if profile.delta:
        conf.update(DELTA_CONF)
        jars = cached_delta_jars(home)
        existing = [j for j in conf.get("spark.jars", "").split(",") if j]
        conf["spark.jars"] = ",".join([*existing, *jars])
    conf.update(extra)
    return conf


def _delta_on_classpath(spark: SparkSession) -> bool:
    jvm = spark.sparkContext._jvm
    if jvm is None:  # Spark Connect: the server's classpath is not ours to check
        return True
    try:
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension", False, loader)
    except Exception:
        return False
    return True


def _given_master() -> str | None:
    """The master the launch already chose: ``MASTER``, or spark-submit's ``--master`` (which reaches this
    Python driver as the running JVM's ``spark.master``). It wins over a profile's default."""
    if os.environ.get("MASTER"):
        return os.environ["MASTER"]
    if os.environ.get("PYSPARK_GATEWAY_PORT"):  # launched by spark-submit: its JVM holds the settings
        from pyspark import SparkConf

        conf = SparkConf()
        return conf.get("spark.master") if conf.contains("spark.master") else None
    return None


def is_connect() -> bool:
    """Whether a new session here is a Spark Connect one: pyspark's own switches, ``SPARK_REMOTE`` (the
    server's ``sc://`` URL) or a process already in Connect mode."""
    from pyspark.sql.utils import is_remote

    return bool(os.environ.get("SPARK_REMOTE")) or bool(is_remote())


def _connect_session(conf: Mapping[str, str]) -> SparkSession:
    """A Spark Connect session to ``SPARK_REMOTE``: the server owns its master, jars and static settings,
    so only runtime SQL settings (``spark.sql.*``) of the profile and the job are applied."""
    from pyspark.sql import SparkSession

    runtime = {k: v for k, v in conf.items() if k.startswith("spark.sql.") and k not in _STATIC_SQL}
    skipped = sorted(set(conf) - set(runtime))
    if skipped:
        log.debug("Spark Connect: the server's own settings stand for %s", ", ".join(skipped))
    builder = SparkSession.builder
    for key, value in runtime.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


_STATIC_SQL = ("spark.sql.extensions", "spark.sql.catalog.spark_catalog", "spark.sql.warehouse.dir")


def get_or_create_session(
    profile: str = "local", extra_conf: Mapping[str, str] | None = None, home: Path | None = None
) -> tuple[SparkSession, bool]:
    """Return ``(session, created)``: the active session if there is one (a notebook's, Databricks'), else
    a new one from ``profile``: a Spark Connect session when ``SPARK_REMOTE`` is set, else a classic one
    whose master is the launch's (``MASTER``, spark-submit's ``--master``) or else the profile's."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        name = active.conf.get("spark.app.name", None) or "unnamed"
        log.info("using the active SparkSession (app %s); it will not be stopped", name)
        return active, False

    settings = load_spark_profile(profile)
    if is_connect():
        spark = _connect_session({**settings.conf, **(extra_conf or {})})
        log.info("connected to Spark Connect server %s", os.environ.get("SPARK_REMOTE", "(spark.remote)"))
        return spark, True
    conf = session_conf(settings, extra_conf or {}, home)
    # Workers must run the interpreter that has batchscore installed, not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(settings.app_name)
    given = _given_master()
    if settings.master and not given:
        builder = builder.master(settings.master)
    elif given and settings.master and given != settings.master:
        log.info("master %s from the launch; profile %r's %s is not used", given, profile, settings.master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if settings.delta and not _delta_on_classpath(spark):
        spark.stop()
        raise DeltaJarsMissingError(
            "Delta Lake classes are not on the driver's classpath. Under spark-submit the JVM starts before "
            "Python, so jars must be given on the command line: use `batchscore submit …`, or pass "
            "`--jars $(batchscore jars)` to spark-submit."
        )
    log.info("started SparkSession %s with profile %r", spark.conf.get("spark.app.id", None), profile)
    return spark, True


@contextmanager
def spark_session(
    profile: str = "local", extra_conf: Mapping[str, str] | None = None, home: Path | None = None
) -> Iterator[SparkSession]:
    """A session for the duration of a job; stopped afterwards only if this call created it."""
    spark, created = get_or_create_session(profile, extra_conf, home)
    try:
        yield spark
    finally:
        if created:
            spark.stop()
