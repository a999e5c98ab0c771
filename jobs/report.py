"""The comparison report: PNG plots and a Markdown summary of a champion/challenger comparison."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from batchscore.jobs.compare import Comparison, ScoreSample


def write_plots(
    champion: npt.NDArray[Any], challenger: npt.NDArray[Any], labels: npt.NDArray[Any] | None, folder: Path
) -> list[Path]:
    """The figures of :func:`figures` as PNG files in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    return [_save(figure, folder / f"{name}.png") for name, figure in figures(champion, challenger, labels)]


def figures(
    champion: npt.NDArray[Any], challenger: npt.NDArray[Any], labels: npt.NDArray[Any] | None
) -> list[tuple[str, Any]]:
    """Overlaid score histograms, a champion-vs-challenger hexbin, and a calibration plot of both models
    (with labels) or a QQ plot: ``(name, matplotlib Figure)`` pairs, for files or a notebook."""
    import matplotlib.pyplot as plt

    made: list[tuple[str, Any]] = []

    figure, axes = plt.subplots(figsize=(6, 4))
    bins: Any = np.linspace(min(champion.min(), challenger.min()), max(champion.max(), challenger.max()), 50)
    axes.hist(champion, bins=bins, alpha=0.5, label="champion", density=True)
    axes.hist(challenger, bins=bins, alpha=0.5, label="challenger", density=True)
    axes.set(xlabel="score", ylabel="density", title="Score distributions")
    axes.legend()
    made.append(("histograms", figure))

    figure, axes = plt.subplots(figsize=(5, 5))
    axes.hexbin(champion, challenger, gridsize=40, mincnt=1, bins="log")
    low, high = float(bins[0]), float(bins[-1])
    axes.plot([low, high], [low, high], color="black", linewidth=0.8)
    axes.set(xlabel="champion score", ylabel="challenger score", title="Champion vs challenger")
    made.append(("hexbin", figure))

    figure, axes = plt.subplots(figsize=(5, 5))
    if labels is not None:
        for name, scores in (("champion", champion), ("challenger", challenger)):
            edges = np.unique(np.quantile(scores, np.linspace(0, 1, 11)))
            index = np.clip(np.searchsorted(edges[1:-1], scores, side="right"), 0, len(edges) - 2)
            mean_score = [scores[index == i].mean() for i in range(len(edges) - 1) if np.any(index == i)]
            rate = [labels[index == i].mean() for i in range(len(edges) - 1) if np.any(index == i)]
            axes.plot(mean_score, rate, marker="o", label=name)
        axes.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        axes.set(xlabel="mean score (decile)", ylabel="observed rate", title="Calibration")
        axes.legend()
        made.append(("calibration", figure))
    else:
        q = np.linspace(0.01, 0.99, 99)
        axes.plot(np.quantile(champion, q), np.quantile(challenger, q), marker=".")
        axes.plot([low, high], [low, high], color="black", linewidth=0.8)
        axes.set(xlabel="champion quantiles", ylabel="challenger quantiles", title="QQ")
        made.append(("qq", figure))
    return made


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_markdown(comparison: Comparison, context: Mapping[str, Any], plots: list[Path], path: Path) -> Path:
    """A short Markdown report: what was compared, the verdict, every metric, the plots."""
    lines = [
        f"# Shadow comparison {context.get('model_name')}: v{context.get('champion_version')} (champion) "
        f"vs v{context.get('challenger_version')} (challenger)",
        "",
        f"- partition: {context.get('ds')}",
        f"- rows compared: {int(comparison.metrics.get('rows', 0)):,}"
        f" of {context.get('rows_scored'):,} scored",
        f"- job run: {context.get('job_run_id')}",
        f"- **verdict: {comparison.verdict.upper()}**"
        + (f" ({'; '.join(comparison.failed)})" if comparison.failed else ""),
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {name} | {value:.6g} |" for name, value in comparison.metrics.items()),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def write_report(
    comparison: Comparison, sample: ScoreSample, context: Mapping[str, Any], folder: Path
) -> Path:
    """The plots of ``sample`` (none when it is empty) and the Markdown report in ``folder``; returns the
    report's path."""
    plots = write_plots(sample.champion, sample.challenger, sample.labels, folder) if len(sample) else []
    folder.mkdir(parents=True, exist_ok=True)
    return write_markdown(comparison, context, plots, folder / "report.md")
