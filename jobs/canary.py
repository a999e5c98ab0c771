"""Canary split: a stable, monotone assignment of entities to the challenger.

An entity's bucket is ``xxhash64(salt, key) mod 10,000 / 10,000`` (Spark's xxhash64: the same value on
every run, machine and Spark version); it goes to the challenger when its bucket is below the canary
fraction. The same entity gets the same variant every night, and raising the fraction from f to g moves
only the entities with buckets in [f, g) — the fewest possible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchscore.jobs.planning import LINEAGE_COLUMNS, Lineage
from batchscore.jobs.scoring import with_lineage
from batchscore.jobs.tables import read_table

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from batchscore.jobs.config import ScoringJobConfig
    from batchscore.udfs.spec import ScoringPlan

BUCKETS = 10_000
CHAMPION, CHALLENGER = "champion", "challenger"


def canary_bucket(key: Column, salt: str) -> Column:
    """The entity's bucket in [0, 1), from its key."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.lit(salt), key.cast("string")), F.lit(BUCKETS)) / F.lit(float(BUCKETS))


def canary_variant(key: Column, fraction: float, salt: str) -> Column:
    """``"challenger"`` for the entities whose bucket is below ``fraction``, else ``"champion"``."""
    from pyspark.sql import functions as F

    return F.when(canary_bucket(key, salt) < F.lit(fraction), F.lit(CHALLENGER)).otherwise(F.lit(CHAMPION))


def apply_canary(
    valid: DataFrame, cfg: ScoringJobConfig, plan: ScoringPlan, champion: Lineage, challenger: Lineage
) -> DataFrame:
    """Rows scored by both models (:func:`jobs.planning.pair_plan`) with each row's variant from its entity
    key, and its score and lineage from that variant's model."""
    from pyspark.sql import functions as F

    assert cfg.canary is not None
    key = cfg.canary.key_column or cfg.output.key_columns[0]
    score, other = plan.outputs[0].name, plan.outputs[1].name
    variant = canary_variant(F.col(key), cfg.canary.fraction, cfg.canary.salt)
    out = with_lineage(valid.withColumn("variant", variant), champion)
    chosen = F.col("variant") == F.lit(CHALLENGER)
    out = out.withColumns(
        {
            score: F.when(chosen, F.col(other)).otherwise(F.col(score)),
            "model_name": F.when(chosen, F.lit(challenger.model_name)).otherwise(F.col("model_name")),
            "model_version": F.when(chosen, F.lit(challenger.model_version)).otherwise(
                F.col("model_version")
            ),
            "model_run_id": F.when(chosen, F.lit(challenger.model_run_id)).otherwise(F.col("model_run_id")),
        }
    )
    return out.select(*plan.passthrough_columns, score, "variant", *LINEAGE_COLUMNS)


def canary_rows(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None) -> int:
    """Rows of this run's output partition that the challenger scored (read back from the output)."""
    from pyspark.sql import functions as F

    section = cfg.output
    table = read_table(spark, section)
    if ds is not None and section.partition_column:
        table = table.where(F.col(section.partition_column) == F.lit(ds))
    return int(table.where(F.col("variant") == F.lit(CHALLENGER)).count())
