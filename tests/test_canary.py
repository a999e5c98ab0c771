"""Canary split in the nightly job: stable, monotone, within 1% of the fraction; scores by variant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from batchscore.jobs.canary import canary_bucket, canary_variant
from batchscore.jobs.config import ScoringJobConfig
from batchscore.jobs.score import run
from tests.conftest import DATES, Registry
from tests.helpers import assert_close, job_config, reference_scores


def _variants(spark, keys: int, fraction: float, salt: str = "s") -> np.ndarray:
    from pyspark.sql import functions as F

    df = spark.range(keys).select("id", canary_variant(F.col("id"), fraction, salt).alias("v"))
    return np.array([r["v"] for r in df.orderBy("id").collect()])


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_canary_fraction_is_within_one_percent_on_100k_keys(spark, fraction: float) -> None:
    share = float(np.mean(_variants(spark, 100_000, fraction) == "challenger"))
    assert abs(share - fraction) <= 0.01


def test_canary_split_is_stable_and_raising_the_fraction_moves_the_fewest_entities(spark) -> None:
    from pyspark.sql import functions as F

    first, again = _variants(spark, 100_000, 0.1), _variants(spark, 100_000, 0.1)
    assert np.array_equal(first, again), "the same entity gets the same variant every run"
    wider = _variants(spark, 100_000, 0.2)
    assert np.all(wider[first == "challenger"] == "challenger"), "no entity leaves the challenger"
    buckets = np.array(
        [r[0] for r in spark.range(100_000).select(canary_bucket(F.col("id"), "s")).orderBy("id").collect()]
    )
    moved = (first == "champion") & (wider == "challenger")
    assert np.array_equal(moved, (buckets >= 0.1) & (buckets < 0.2)), "exactly the buckets in [0.1, 0.2)"
    assert not np.array_equal(first, _variants(spark, 100_000, 0.1, salt="other")), "the salt redraws"


def test_nightly_job_with_a_canary_scores_each_entity_with_its_variant(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    document = job_config(input_path, str(tmp_path / "out")).model_dump()
    document["canary"] = {"challenger_uri": "models:/fraud@challenger", "fraction": 0.3}
    cfg = ScoringJobConfig.model_validate(document)
    result = run(spark, cfg, DATES[0])
    out = spark.read.format("delta").load(str(tmp_path / "out")).toPandas().sort_values("transaction_id")
    source = spark.read.format("delta").load(input_path).where(f"ds = '{DATES[0]}'").toPandas()
    source = source.sort_values("transaction_id").reset_index(drop=True)
    assert out["transaction_id"].tolist() == source["transaction_id"].tolist()
    expected = _variants_for(spark, out["transaction_id"].tolist(), 0.3, "batchscore-canary")
    assert out["variant"].tolist() == expected
    challenger = out["variant"].to_numpy() == "challenger"
    assert 0 < challenger.sum() < len(out) and result.runtime["canary_rows"] == challenger.sum()
    champion_ref = reference_scores(f"models:/fraud/{registry.champion}", source).ravel()
    challenger_ref = reference_scores(f"models:/fraud/{registry.challenger}", source).ravel()
    assert_close(out["fraud_score"].to_numpy(), np.where(challenger, challenger_ref, champion_ref))
    versions = np.where(challenger, registry.challenger, registry.champion)
    assert out["model_version"].tolist() == versions.tolist()

    run(spark, cfg, DATES[0])  # the next night: the same entities, the same variants
    again = spark.read.format("delta").load(str(tmp_path / "out")).toPandas().sort_values("transaction_id")
    assert again["variant"].tolist() == out["variant"].tolist()


def _variants_for(spark, keys: list[int], fraction: float, salt: str) -> list[str]:
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(k,) for k in keys], "k long")
    rows = df.select("k", canary_variant(F.col("k"), fraction, salt).alias("v")).orderBy("k").collect()
    return [r["v"] for r in rows]
