"""Champion/challenger shadow job: one pass, both outputs, comparison row checked against numpy/scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from batchscore.jobs.config import ScoringJobConfig
from batchscore.jobs.shadow import run
from tests.conftest import DATES, ROWS_PER_DAY, Registry
from tests.helpers import assert_close, job_config, reference_scores

DS = DATES[2]


def shadow_config(input_path: str, tmp_path: Path, challenger: str, **shadow: object) -> ScoringJobConfig:
    document = job_config(input_path, str(tmp_path / "scores")).model_dump()
    document["shadow"] = {
        "challenger_uri": challenger,
        "output": {"path": str(tmp_path / "shadow_scores")},
        "comparison": {"path": str(tmp_path / "comparison")},
        "label_column": "label",
        **shadow,
    }
    return ScoringJobConfig.model_validate(document)


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI on the champion's deciles, written independently of jobs.compare."""
    edges = np.quantile(expected, np.linspace(0, 1, 11))
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.histogram(expected, edges)[0] / len(expected)
    q = np.histogram(actual, edges)[0] / len(actual)
    p, q = np.maximum(p, 1e-6), np.maximum(q, 1e-6)
    return float(np.sum((q - p) * np.log(q / p)))


def test_shadow_scores_both_models_in_one_pass_and_compares_them(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient
    from sklearn.metrics import roc_auc_score

    cfg = shadow_config(
        input_path, tmp_path, "models:/fraud@challenger", thresholds={"min_spearman": 0.999, "max_psi": 10.0}
    )
    result = run(spark, cfg, DS)
    assert result.rows_scored == ROWS_PER_DAY

    source = spark.read.format("delta").load(input_path).where(f"ds = '{DS}'").toPandas()
    source = source.sort_values("transaction_id").reset_index(drop=True)
    champion = (
        spark.read.format("delta").load(str(tmp_path / "scores")).toPandas().sort_values("transaction_id")
    )
    challenger = spark.read.format("delta").load(str(tmp_path / "shadow_scores")).toPandas()
    challenger = challenger.sort_values("transaction_id")
    assert (
        champion["transaction_id"].tolist()
        == challenger["transaction_id"].tolist()
        == source["transaction_id"].tolist()
    )
    assert list(challenger.columns) == list(champion.columns)
    assert set(champion["model_version"]) == {registry.champion}
    assert set(challenger["model_version"]) == {registry.challenger}
    a = champion["fraud_score"].to_numpy()
    b = challenger["fraud_score"].to_numpy()
    assert_close(a.reshape(-1, 1), reference_scores(f"models:/fraud/{registry.champion}", source))
    assert_close(b.reshape(-1, 1), reference_scores(f"models:/fraud/{registry.challenger}", source))

    run_data = MlflowClient(registry.tracking_uri).get_run(result.job_run_id).data.metrics
    assert run_data["rows_through_models"] == ROWS_PER_DAY, "one pass: each row decoded once for both models"

    row = spark.read.format("delta").load(str(tmp_path / "comparison")).toPandas()
    assert len(row) == 1
    row = row.iloc[0]
    y = source["label"].to_numpy()
    assert row["rows"] == ROWS_PER_DAY and row["ds"] == DS
    assert row["champion_mean"] == pytest.approx(a.mean()) and row["challenger_std"] == pytest.approx(b.std())
    assert row["champion_p95"] == pytest.approx(np.quantile(a, 0.95))
    assert row["mean_abs_delta"] == pytest.approx(np.abs(a - b).mean())
    assert row["max_abs_delta"] == pytest.approx(np.abs(a - b).max())
    assert row["pearson"] == pytest.approx(sps.pearsonr(a, b).statistic)
    assert row["spearman"] == pytest.approx(sps.spearmanr(a, b).statistic)
    assert row["ks"] == pytest.approx(sps.ks_2samp(a, b).statistic)
    assert row["psi"] == pytest.approx(_psi(a, b), rel=1e-6)
    assert row["agreement"] == pytest.approx(np.mean((a >= 0.5) == (b >= 0.5)))
    assert row["champion_auc"] == pytest.approx(roc_auc_score(y, a))
    assert row["challenger_auc"] == pytest.approx(roc_auc_score(y, b))
    assert row["challenger_rmse"] == pytest.approx(np.sqrt(np.mean((b - y) ** 2)))
    assert row["verdict"] == "fail" and row["failed_checks"].startswith("spearman ")
    assert "min_spearman 0.999" in row["failed_checks"]
    assert result.verdict == "fail"

    artifacts = {
        a.path for a in MlflowClient(registry.tracking_uri).list_artifacts(result.job_run_id, "shadow_report")
    }
    assert {
        f"shadow_report/{n}" for n in ("histograms.png", "hexbin.png", "calibration.png", "report.md")
    } <= artifacts
    assert "verdict: FAIL" in result.report.read_text()

    # A rerun replaces this pair's row for the partition instead of adding one.
    run(spark, cfg, DS)
    assert spark.read.format("delta").load(str(tmp_path / "comparison")).count() == 1


def test_identical_models_have_zero_delta_and_pass(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    cfg = shadow_config(
        input_path,
        tmp_path,
        f"models:/fraud/{registry.champion}",
        thresholds={
            "max_abs_delta": 0.0,
            "max_psi": 0.0,
            "max_ks": 0.0,
            "min_pearson": 1.0,
            "min_agreement": 1.0,
        },
    )
    result = run(spark, cfg, DS)
    metrics = result.comparison.metrics
    assert result.verdict == "pass", result.comparison.failed
    assert metrics["max_abs_delta"] == 0.0 and metrics["psi"] == 0.0 and metrics["ks"] == 0.0
    assert metrics["auc_delta"] == 0.0


def test_promotion_needs_a_passing_comparison_and_rollback_restores(
    spark, registry: Registry, input_path: str, tmp_path: Path, promo: str
) -> None:
    from mlflow import MlflowClient

    from batchscore.jobs.promote import PromotionRefusedError, promote, rollback

    client = MlflowClient(registry.tracking_uri)
    champion = str(client.get_model_version_by_alias(promo, "champion").version)
    challenger = str(client.get_model_version_by_alias(promo, "challenger").version)

    def cfg(**thresholds: float) -> ScoringJobConfig:
        document = shadow_config(input_path, tmp_path, f"models:/{promo}@challenger", thresholds=thresholds)
        document = document.model_dump()
        document["model"]["uri"] = f"models:/{promo}@champion"
        return ScoringJobConfig.model_validate(document)

    with pytest.raises(PromotionRefusedError, match="no comparison"):
        promote(spark, cfg())
    run(spark, cfg(min_spearman=0.9999), DS)
    with pytest.raises(PromotionRefusedError, match=r"failed: spearman .* < min_spearman 0\.9999"):
        promote(spark, cfg())
    assert str(client.get_model_version_by_alias(promo, "champion").version) == champion

    run(spark, cfg(max_psi=10.0), DS)  # the newest comparison of the pair passes
    done = promote(spark, cfg())
    assert (done.champion, done.previous) == (challenger, champion)
    assert str(client.get_model_version_by_alias(promo, "champion").version) == challenger
    tags = client.get_model_version(promo, challenger).tags
    assert tags["batchscore.promoted_by"] and tags["batchscore.promoted_at"]
    assert tags["batchscore.promoted_reason"].startswith(f"comparison on {DS} passed")
    assert tags["batchscore.replaced_version"] == champion

    back = rollback(cfg(), reason="bad night")
    assert back.champion == champion
    assert str(client.get_model_version_by_alias(promo, "champion").version) == champion
    assert (
        client.get_model_version(promo, champion).tags["batchscore.rolled_back_reason"].endswith("bad night")
    )


def test_force_promotes_without_a_comparison_and_says_so(
    spark, registry: Registry, input_path: str, tmp_path: Path, promo: str
) -> None:
    from mlflow import MlflowClient

    from batchscore.jobs.promote import promote

    document = shadow_config(input_path, tmp_path, f"models:/{promo}@challenger").model_dump()
    document["model"]["uri"] = f"models:/{promo}@champion"
    done = promote(spark, ScoringJobConfig.model_validate(document), force=True, reason="hotfix")
    tags = MlflowClient(registry.tracking_uri).get_model_version(promo, done.champion).tags
    assert tags["batchscore.promoted_reason"].startswith("--force (hotfix); no comparison")


def test_shadow_under_on_invalid_fail_counts_and_compares_without_a_quarantine(
    spark, registry: Registry, input_path: str, tmp_path: Path
) -> None:
    from tests.helpers import with_sections

    cfg = shadow_config(input_path, tmp_path, f"models:/fraud/{registry.champion}")
    result = run(spark, with_sections(cfg, quality={"on_invalid": "fail"}), DS)
    assert result.rows_scored == ROWS_PER_DAY and result.invalid_rows == 0
    assert result.comparison.metrics["rows"] == ROWS_PER_DAY and result.verdict == "pass"
    shadow_rows = spark.read.format("delta").load(str(tmp_path / "shadow_scores")).where(f"ds = '{DS}'")
    assert shadow_rows.count() == ROWS_PER_DAY
    assert not (tmp_path / "scores_quarantine").exists(), "nothing was quarantined, no table made"
