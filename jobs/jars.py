"""Delta Lake's JVM jars: resolved from Maven Central once (setup step), then used from a local cache.

``configure_spark_with_delta_pip`` resolves ``spark.jars.packages`` through Ivy at every session start; a
nightly job should not depend on Maven being reachable, so ``batchscore setup`` resolves once into
``$BATCHSCORE_HOME/jars`` and sessions add those files with ``spark.jars``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from batchscore.jobs.errors import DeltaJarsMissingError
from batchscore.jobs.home import batchscore_home

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST"


def delta_coordinate() -> str:
    """The Maven coordinate matching the installed delta-spark and pyspark (as delta's pip_utils does)."""
    # The installed distribution's version, without importing pyspark (schedulers call this while parsing).
    spark_minor = ".".join(metadata.version("pyspark").split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{metadata.version('delta-spark')}"


def jars_dir(home: Path | None = None) -> Path:
    """``$BATCHSCORE_JARS_DIR``, else ``jars/`` in the batchscore home."""
    override = os.environ.get("BATCHSCORE_JARS_DIR")
    if override and home is None:
        return Path(override).resolve()
    return (home or batchscore_home()) / "jars"


def cached_delta_jars(home: Path | None = None) -> list[str]:
    """The cached jar files for the installed Delta version; a clear error when they are not there."""
    folder = jars_dir(home)
    manifest = folder / MANIFEST
    wanted = delta_coordinate()
    found = manifest.read_text().strip() if manifest.is_file() else None
    if found != wanted:
        state = f"it holds {found}" if found else "it is empty or missing"
        raise DeltaJarsMissingError(
            f"Delta Lake jars for {wanted} are not cached in {folder} ({state}). "
            "Run `batchscore setup` (or `make setup`) once to fetch them from Maven Central."
        )
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not jars:
        raise DeltaJarsMissingError(f"{manifest} names {wanted} but {folder} holds no jar files; rerun setup")
    return jars


def artifact_name(jar_name: str) -> str:
    """``jackson-core-2.13.5.jar`` -> ``jackson-core``: the name before the first ``-<digit>``."""
    match = re.match(r"^(.*?)-\d", jar_name.removesuffix(".jar"))
    return match.group(1) if match else jar_name.removesuffix(".jar")


def resolve_delta_jars(home: Path | None = None, force: bool = False) -> list[str]:
    """Resolve Delta's jars with Spark's own Ivy resolver and cache those Spark does not already ship."""
    folder = jars_dir(home)
    if not force:
        try:
            return cached_delta_jars(home)
        except DeltaJarsMissingError:
            pass
    import pyspark
    from pyspark.sql import SparkSession

    coordinate = delta_coordinate()
    log.info("resolving %s from Maven Central into %s", coordinate, folder)
    spark_jar_dir = Path(pyspark.__file__).parent / "jars"
    # Jars pyspark already ships (in any version) are left out: Spark's own copy wins on the classpath anyway.
    spark_artifacts = {artifact_name(p.name) for p in spark_jar_dir.glob("*.jar")}
    with tempfile.TemporaryDirectory(prefix="batchscore-ivy-") as ivy:
        session = (
            SparkSession.builder.master("local[1]")
            .appName("batchscore-setup")
            .config("spark.jars.packages", coordinate)
            .config("spark.jars.ivy", ivy)
            .config("spark.ui.enabled", "false")
            .getOrCreate()
        )
        session.stop()
        resolved = sorted((Path(ivy) / "jars").glob("*.jar"))
        if not resolved:
            raise DeltaJarsMissingError(f"Ivy resolved no jars for {coordinate}; is Maven Central reachable?")
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for jar in resolved:
            # Ivy names files group_artifact-version.jar.
            if artifact_name(jar.name.split("_", 1)[-1]) not in spark_artifacts:
                shutil.copy2(jar, folder / jar.name)
    (folder / MANIFEST).write_text(coordinate + "\n")
    return cached_delta_jars(home)
