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

from jobs.config import SparkProfile, load_spark_profile
from jobs.errors import DeltaJarsMissingError
from jobs.jars import cached_delta_jars

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


def get_or_create_session(
    profile: str = "local", extra_conf: Mapping[str, str] | None = None, home: Path | None = None
) -> tuple[SparkSession, bool]:
    """Return ``(session, created)``: the active session if there is one, else a new one from ``profile``."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        log.info(
            "using the active SparkSession (app %s); it will not be stopped", active.sparkContext.appName
        )
        return active, False

    settings = load_spark_profile(profile)
    conf = session_conf(settings, extra_conf or {}, home)
    # Workers must run the interpreter that has batchscore installed, not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(settings.app_name)
    if settings.master:
        builder = builder.master(settings.master)
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
    log.info("started SparkSession %s with profile %r", spark.sparkContext.applicationId, profile)
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
