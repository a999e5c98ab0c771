"""How a run keeps the scored rows it reads more than once (``quality.hold``).

A quarantining run counts the invalid rows, writes them to quarantine, then writes the valid ones; the
shadow job also samples and compares them. Computing the scores once for all of that takes either Spark's
cache (``persist``) or a staging table (``stage``): the rows are written once to a Delta table of their own
for this run and read back from it, so no step recomputes the model and nothing is cached — what Databricks
serverless and other Spark Connect services ask for. ``auto`` stages over Spark Connect and persists on a
classic session. The staging table is removed as the run ends, whether it succeeded or not.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from batchscore.jobs.config import QuarantineSection, ScoringJobConfig
from batchscore.jobs.home import resolve_location
from batchscore.jobs.scoring import Keep, kept
from batchscore.jobs.tables import sql_target, validate_table_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("batchscore.holding")


def is_connect_session(spark: SparkSession) -> bool:
    return ".connect." in type(spark).__module__


def hold_mode(spark: SparkSession, cfg: ScoringJobConfig) -> str:
    """``persist`` or ``stage``: the configured ``quality.hold``, ``auto`` decided by the session kind."""
    if cfg.quality.hold != "auto":
        return cfg.quality.hold
    return "stage" if is_connect_session(spark) else "persist"


def run_staging(cfg: ScoringJobConfig, run_id: str, index: int) -> QuarantineSection:
    """The ``index``-th staging table of a run: a folder under the staging path, or the staging table's
    name with the run id and the index."""
    base = cfg.staging_section()
    if base.table is not None:
        return QuarantineSection(table=validate_table_name(f"{base.table}_{run_id}_{index}"))
    return QuarantineSection(path=f"{(base.path or '').rstrip('/')}/run={run_id}/{index}")


def _local_folder(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else location)
    return None


def _remove(spark: SparkSession, section: QuarantineSection) -> None:
    """Drop a run's staging table: a catalog table is dropped; a local folder removed; elsewhere (object
    stores, DBFS) its rows are deleted and VACUUM reclaims the files."""
    try:
        if section.table is not None:
            spark.sql(f"DROP TABLE IF EXISTS {sql_target(section)}")
            return
        location = resolve_location(section.path or "")
        folder = _local_folder(location)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            for parent in (folder.parent, folder.parent.parent):  # run=<id>/, then the staging folder
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
        else:
            spark.sql(f"DELETE FROM {sql_target(section)}")
    except Exception as exc:  # the run's outcome stands; a leftover staging table is only disk
        log.warning("could not remove the staging table %s: %s", section.describe(), exc)


@contextmanager
def staged(spark: SparkSession, cfg: ScoringJobConfig, run_id: str) -> Iterator[Keep]:
    """A ``keep`` function that writes each frame once to a staging table of its own and returns it as
    read back; the tables are removed on leaving."""
    used: list[QuarantineSection] = []

    def keep(frame: DataFrame) -> DataFrame:
        section = run_staging(cfg, run_id, len(used))
        used.append(section)
        log.info("staging the scored rows in %s (quality.hold: stage)", section.describe())
        writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
        if section.table is not None:
            writer.saveAsTable(validate_table_name(section.table))
            return spark.read.table(section.table)
        location = resolve_location(section.path or "")
        writer.save(location)
        return spark.read.format("delta").load(location)

    try:
        yield keep
    finally:
        for section in used:
            _remove(spark, section)


@contextmanager
def held(spark: SparkSession, cfg: ScoringJobConfig, run_id: str) -> Iterator[Keep]:
    """The ``keep`` function of ``quality.hold`` for the run ``run_id``."""
    if hold_mode(spark, cfg) == "persist":
        with kept() as keep:
            yield keep
    else:
        with staged(spark, cfg, run_id) as keep:
            yield keep
