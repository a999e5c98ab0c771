"""Champion vs challenger: comparison metrics of two score vectors and a verdict against thresholds.

Pure numpy/scipy on the driver: the shadow job and the notebook API collect the two score columns (and the
label, when there is one) of the scored rows, or a uniform sample of them (:func:`sample_scores`), and
compare them (:meth:`ScoreSample.compare`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
PSI_BINS = 10
_EPS = 1e-6

# Every metric :func:`metrics` can produce, in a fixed order (the comparison table's columns).
METRIC_COLUMNS: tuple[str, ...] = (
    "rows",
    *(f"{who}_{stat}" for who in ("champion", "challenger")
      for stat in ("mean", "std", *(f"p{round(q * 100):02d}" for q in QUANTILES))),
    "mean_abs_delta",
    "max_abs_delta",
    "pearson",
    "spearman",
    "agreement",
    "psi",
    "ks",
    *(f"{who}_{m}" for who in ("champion", "challenger") for m in ("auc", "accuracy", "rmse")),
    "auc_delta",
    "accuracy_delta",
    "rmse_delta",
)  # fmt: skip

# threshold key -> (metric, direction): "max" fails when metric > limit, "min" when metric < limit.
CHECKS: dict[str, tuple[str, str]] = {
    "max_mean_abs_delta": ("mean_abs_delta", "max"),
    "max_abs_delta": ("max_abs_delta", "max"),
    "min_pearson": ("pearson", "min"),
    "min_spearman": ("spearman", "min"),
    "min_agreement": ("agreement", "min"),
    "max_psi": ("psi", "max"),
    "max_ks": ("ks", "max"),
    "min_auc_delta": ("auc_delta", "min"),
    "min_accuracy_delta": ("accuracy_delta", "min"),
    "max_rmse_delta": ("rmse_delta", "max"),
}


@dataclass(frozen=True)
class Comparison:
    metrics: dict[str, float]
    verdict: str  # "pass" | "fail"
    failed: tuple[str, ...] = field(default=())  # "psi 0.31 > max_psi 0.25", …


def psi(expected: npt.NDArray[np.float64], actual: npt.NDArray[np.float64], bins: int = PSI_BINS) -> float:
    """Population stability index of ``actual`` against ``expected``, on ``expected``'s decile bins."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant champion: one bin holds everything
        return 0.0 if np.all(actual == expected[0]) else float("inf")
    inner = edges[1:-1]
    p = np.bincount(np.searchsorted(inner, expected, side="right"), minlength=len(edges) - 1) / len(expected)
    q = np.bincount(np.searchsorted(inner, actual, side="right"), minlength=len(edges) - 1) / len(actual)
    p, q = np.clip(p, _EPS, None), np.clip(q, _EPS, None)
    return float(np.sum((q - p) * np.log(q / p)))


def auc(scores: npt.NDArray[np.float64], labels: npt.NDArray[Any]) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties count one half); NaN with a single class."""
    from scipy.stats import rankdata

    positive = labels.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _correlation(kind: str, a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    from scipy.stats import pearsonr, spearmanr

    if np.array_equal(a, b):
        return 1.0
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    result = pearsonr(a, b) if kind == "pearson" else spearmanr(a, b)
    return float(result.statistic)


def metrics(
    champion: npt.NDArray[Any],
    challenger: npt.NDArray[Any],
    threshold: float,
    labels: npt.NDArray[Any] | None = None,
) -> dict[str, float]:
    """Distribution, agreement and (with labels) quality metrics of two aligned score vectors."""
    from scipy.stats import ks_2samp

    a = np.asarray(champion, dtype=np.float64)
    b = np.asarray(challenger, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two aligned 1-D score vectors, found shapes {a.shape} and {b.shape}")
    out: dict[str, float] = {"rows": float(len(a))}
    if len(a) == 0:
        return out
    for name, scores in (("champion", a), ("challenger", b)):
        out[f"{name}_mean"] = float(scores.mean())
        out[f"{name}_std"] = float(scores.std())
        for q, value in zip(QUANTILES, np.quantile(scores, QUANTILES), strict=True):
            out[f"{name}_p{round(q * 100):02d}"] = float(value)
    delta = np.abs(a - b)
    out["mean_abs_delta"] = float(delta.mean())
    out["max_abs_delta"] = float(delta.max())
    out["pearson"] = _correlation("pearson", a, b)
    out["spearman"] = _correlation("spearman", a, b)
    out["agreement"] = float(np.mean((a >= threshold) == (b >= threshold)))
    out["psi"] = psi(a, b)
    out["ks"] = 0.0 if np.array_equal(np.sort(a), np.sort(b)) else float(ks_2samp(a, b).statistic)
    if labels is not None:
        y = np.asarray(labels, dtype=np.float64)
        for name, scores in (("champion", a), ("challenger", b)):
            out[f"{name}_auc"] = auc(scores, y)
            out[f"{name}_accuracy"] = float(np.mean((scores >= threshold) == (y >= 0.5)))
            out[f"{name}_rmse"] = float(np.sqrt(np.mean((scores - y) ** 2)))
        for metric in ("auc", "accuracy", "rmse"):
            out[f"{metric}_delta"] = out[f"challenger_{metric}"] - out[f"champion_{metric}"]
    return out


def verdict(values: Mapping[str, float], thresholds: Mapping[str, float]) -> Comparison:
    """Pass when every configured threshold holds; a threshold on a metric that was not computed (e.g. AUC
    without labels) is skipped, a NaN metric fails its check."""
    failed = []
    for key, limit in thresholds.items():
        if key not in CHECKS:
            raise ValueError(f"unknown threshold {key!r}; expected one of {sorted(CHECKS)}")
        metric, direction = CHECKS[key]
        if metric not in values:
            continue
        value = values[metric]
        bad = np.isnan(value) or (value > limit if direction == "max" else value < limit)
        if bad:
            sign = ">" if direction == "max" else "<"
            failed.append(f"{metric} {value:.4g} {sign} {key} {limit:g}")
    return Comparison(dict(values), "fail" if failed else "pass", tuple(failed))


def compare(
    champion: npt.NDArray[Any],
    challenger: npt.NDArray[Any],
    *,
    threshold: float,
    thresholds: Mapping[str, float],
    labels: npt.NDArray[Any] | None = None,
) -> Comparison:
    return verdict(metrics(champion, challenger, threshold, labels), thresholds)


@dataclass(frozen=True)
class ScoreSample:
    """Aligned champion and challenger scores (and labels) of the rows compared, on the driver."""

    champion: npt.NDArray[np.float64]
    challenger: npt.NDArray[np.float64]
    labels: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.champion)

    def compare(self, *, threshold: float, thresholds: Mapping[str, float]) -> Comparison:
        return compare(
            self.champion, self.challenger, threshold=threshold, thresholds=thresholds, labels=self.labels
        )


SAMPLE_SEED = 17


def sample_scores(
    scored: DataFrame, champion: str, challenger: str, label: str | None, *, rows: int, max_rows: int
) -> ScoreSample:
    """The ``champion`` and ``challenger`` columns of ``scored`` (``rows`` rows), or of a uniform sample of
    about ``max_rows`` of them, collected to the driver; rows without a label are left out when there is
    a ``label`` column."""
    sample = scored if rows <= max_rows else scored.sample(fraction=max_rows / rows, seed=SAMPLE_SEED)
    frame: Any = sample.select(champion, challenger, *([label] if label else [])).toPandas()
    labels = None
    if label:
        frame = frame[frame[label].notna()]
        labels = frame[label].to_numpy(dtype=np.float64)
    return ScoreSample(
        frame[champion].to_numpy(dtype=np.float64), frame[challenger].to_numpy(dtype=np.float64), labels
    )
