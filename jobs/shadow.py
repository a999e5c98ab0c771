"""The shadow job: champion and challenger score the same partition in one pass, and are compared.

``batchscore shadow --config conf/jobs/<job>.yaml --ds YYYY-MM-DD`` (or ``batchscore submit shadow …``)
scores the input once with both models resident in every worker, writes the champion's scores to the
production output and the challenger's to ``shadow.output`` (same columns and lineage), replaces the
``ds`` and model pair's row of ``shadow.comparison`` (distribution, agreement, drift and, with a label,
quality metrics, plus the verdict against ``shadow.thresholds``), and logs the metrics, PNG plots and a
Markdown report to the job's MLflow run. Exit code 0 whatever the verdict (``--fail-on-verdict``: 3 on a
fail).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchscore.jobs.compare import Comparison, sample_scores
from batchscore.jobs.errors import TableLocationError
from batchscore.jobs.home import batchscore_home
from batchscore.jobs.outputs import write_comparison, write_idempotent
from batchscore.jobs.planning import PlanRequest, pair_plan
from batchscore.jobs.report import write_report
from batchscore.jobs.runner import JobContext, ScoringJob, run_job
from batchscore.jobs.runner import main as run_main
from batchscore.jobs.scoring import with_lineage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from batchscore.jobs.config import ScoringJobConfig, ShadowSection
    from batchscore.jobs.inputs import ScoringInput
    from batchscore.jobs.registry import ResolvedModel
    from batchscore.udfs.spec import ScoringPlan


@dataclass(frozen=True)
class ShadowResult:
    comparison: Comparison
    rows_scored: int
    invalid_rows: int
    job_run_id: str
    report: Path
    champion_uri: str
    challenger_uri: str
    ds: str | None

    @property
    def verdict(self) -> str:
        return self.comparison.verdict


def _shadow(cfg: ScoringJobConfig) -> ShadowSection:
    if cfg.shadow is None:
        raise TableLocationError(f"job {cfg.name!r} has no 'shadow' section; the shadow job needs one")
    return cfg.shadow


class ShadowJob(ScoringJob[ShadowResult]):
    name = "shadow"
    description = "Champion and challenger score the same partition in one pass, and are compared."
    ds_help = "partition to compare, YYYY-MM-DD (default: the whole input)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--fail-on-verdict", action="store_true", help="exit 3 when the verdict is fail")

    def check(self, cfg: ScoringJobConfig, ds: str | None) -> None:
        _shadow(cfg)

    def models(self, cfg: ScoringJobConfig) -> dict[str, str]:
        return {"champion": cfg.model.uri, "challenger": _shadow(cfg).challenger_uri}

    def plan(
        self, cfg: ScoringJobConfig, models: Mapping[str, ResolvedModel], source: ScoringInput
    ) -> ScoringPlan:
        label = _shadow(cfg).label_column
        request, extra = PlanRequest.for_job(cfg), [label] if label else []
        plan = pair_plan(models["champion"], models["challenger"], request, source.columns, extra=extra)[0]
        if label and label not in source.columns:
            raise TableLocationError(f"shadow.label_column {label!r} is not an input column")
        return plan

    def run_name(self, cfg: ScoringJobConfig, ds: str | None) -> str:
        return f"{cfg.name}-shadow-{ds or 'all'}"

    def params(self, ctx: JobContext) -> dict[str, Any]:
        shadow = _shadow(ctx.cfg)
        return {
            "champion_uri": ctx.cfg.model.uri,
            "champion_load_uri": ctx.models["champion"].ref.load_uri,
            "challenger_uri": shadow.challenger_uri,
            "challenger_load_uri": ctx.models["challenger"].ref.load_uri,
            "decision_threshold": shadow.decision_threshold,
            "thresholds": json.dumps(shadow.thresholds, sort_keys=True),
        }

    def step(self, ctx: JobContext) -> ShadowResult:
        import numpy as np
        from pyspark.sql import functions as F

        cfg, ds, shadow = ctx.cfg, ctx.ds, _shadow(ctx.cfg)
        champion, challenger = ctx.models["champion"].ref, ctx.models["challenger"].ref
        score_column, shadow_column = (out.name for out in ctx.plan.outputs)
        passthrough = PlanRequest.for_job(cfg).passthrough_columns  # not the label
        # Everything that can fail (scoring, the invalid-row limit, the comparison, the report) comes
        # before the first write, so a failed run leaves every table as it was.
        scored = ctx.score(persist=True)  # read four times: the count, the sample, two outputs
        rows = scored.rows or 0
        label = shadow.label_column
        sample = sample_scores(
            scored.valid, score_column, shadow_column, label, rows=rows, max_rows=shadow.max_compare_rows
        )
        comparison = sample.compare(threshold=shadow.decision_threshold, thresholds=shadow.thresholds)
        folder = batchscore_home() / "reports" / cfg.name / (ds or "all") / ctx.run_id
        context = {"model_name": champion.name, "champion_version": champion.version,
                   "challenger_version": challenger.version, "ds": ds, "rows_scored": rows,
                   "job_run_id": ctx.run_id}  # fmt: skip
        report = write_report(comparison, sample, context, folder)
        ctx.quarantine(scored)
        stats_columns = [*cfg.output.key_columns, score_column]
        for section, column, lineage in (
            (cfg.output, F.col(score_column), ctx.lineage("champion")),
            (shadow.output, F.col(shadow_column).alias(score_column), ctx.lineage("challenger")),
        ):
            write_idempotent(
                with_lineage(scored.valid.select(*passthrough, column), lineage),
                section,
                ds,
                commit_tag=ctx.run_id,
                stats_columns=stats_columns,
            )
        ctx.tracker.log_metrics(
            {
                **{k: v for k, v in comparison.metrics.items() if np.isfinite(v)},
                "rows_scored": rows,
                "invalid_rows": scored.invalid,
                "verdict_pass": 1.0 if comparison.verdict == "pass" else 0.0,
                "duration_s": time.perf_counter() - ctx.started,
                **{k: v for k, v in ctx.runtime().items() if k != "invalid_rows"},
            }
        )
        ctx.tracker.log_artifacts(folder, "shadow_report")
        write_comparison(
            ctx.spark,
            shadow,
            ds,
            models=(champion, challenger),
            comparison=comparison,
            counts=(rows, scored.invalid),
            report=report,
            job_run_id=ctx.run_id,
        )
        return ShadowResult(
            comparison, rows, scored.invalid, ctx.run_id, report, champion.load_uri, challenger.load_uri, ds
        )

    def summary(self, result: ShadowResult) -> str:
        failed = f" ({'; '.join(result.comparison.failed)})" if result.comparison.failed else ""
        verdict = {"verdict": result.verdict, "failed": list(result.comparison.failed),
                   "job_run_id": result.job_run_id, "report": str(result.report)}  # fmt: skip
        return (
            f"shadow {result.champion_uri} vs {result.challenger_uri} on {result.rows_scored} rows: "
            f"verdict {result.verdict}{failed}; report {result.report}; job run {result.job_run_id}\n"
            + json.dumps(verdict)
        )

    def exit_code(self, result: ShadowResult, args: argparse.Namespace) -> int:
        return 3 if args.fail_on_verdict and result.verdict == "fail" else 0


JOB = ShadowJob()


def run(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None = None) -> ShadowResult:
    """Score ``ds`` with champion and challenger in one pass; write both outputs; compare; report."""
    return run_job(spark, cfg, ds, JOB)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(JOB, argv)
