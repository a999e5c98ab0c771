"""Canary split: a stable, monotone assignment of entities to the challenger.

An entity's bucket is ``xxhash64(salt, key) mod 10,000 / 10,000`` (Spark's xxhash64: the same value on
every run, machine and Spark version); it goes to the challenger when its bucket is below the canary
fraction. The same entity gets the same variant every night, and raising the fraction from f to g moves
only the entities with buckets in [f, g) — the fewest possible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

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
