"""The nightly scoring job: read a partition, score it with a pinned MLflow model, write it idempotently.

``batchscore score --config conf/jobs/<job>.yaml [--ds YYYY-MM-DD] [--set key=value]…``, or through
spark-submit with ``batchscore submit score …``. With a ``canary`` section a stable fraction of entities
gets the challenger's score (:mod:`jobs.canary`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchscore.jobs.canary import apply_canary, canary_rows
from batchscore.jobs.errors import TableLocationError
from batchscore.jobs.home import resolve_location
from batchscore.jobs.outputs import committed_rows, write_idempotent
from batchscore.jobs.planning import PlanRequest, build_plan, pair_plan
from batchscore.jobs.runner import JobContext, ScoringJob, log_runtime, run_job
from batchscore.jobs.runner import main as run_main
from batchscore.jobs.scoring import with_lineage

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from batchscore.jobs.config import ScoringJobConfig
    from batchscore.jobs.inputs import ScoringInput
    from batchscore.jobs.registry import ResolvedModel
    from batchscore.udfs.spec import ScoringPlan

log = logging.getLogger("batchscore.score")


@dataclass(frozen=True)
class ScoreResult:
    rows_scored: int
    duration_s: float
    output: str
    model_uri: str
    model_version: str | None
    job_run_id: str
    ds: str | None
    runtime: dict[str, float] = field(default_factory=dict)  # model loads, batch latency, stage times
    invalid_rows: int = 0  # sent to the quarantine table

    @property
    def rows_per_s(self) -> float:
        return self.rows_scored / self.duration_s if self.duration_s > 0 else 0.0


class ScoreJob(ScoringJob[ScoreResult]):
    name = "score"
    description = "Score a partition with a pinned MLflow model and write it idempotently."

    def check(self, cfg: ScoringJobConfig, ds: str | None) -> None:
        if ds is not None and cfg.output.partition_column is None:
            raise TableLocationError(
                f"output {cfg.output.describe()}: --ds was given but output.partition_column is not set; "
                "a nightly run must replace one partition, not the whole table"
            )

    def models(self, cfg: ScoringJobConfig) -> dict[str, str]:
        canary = {"challenger": cfg.canary.challenger_uri} if cfg.canary is not None else {}
        return {"model": cfg.model.uri, **canary}

    def plan(
        self, cfg: ScoringJobConfig, models: Mapping[str, ResolvedModel], source: ScoringInput
    ) -> ScoringPlan:
        request = PlanRequest.for_job(cfg)
        if "challenger" not in models:
            return build_plan(models["model"], request, source.columns, check_columns=False)
        # Canary: both models score every row; the entity's variant picks the score.
        return pair_plan(models["model"], models["challenger"], request, source.columns)[0]

    def params(self, ctx: JobContext) -> dict[str, Any]:
        cfg, ref = ctx.cfg, ctx.models["model"].ref
        return {
            "model_uri": ref.requested_uri,
            "model_load_uri": ref.load_uri,
            "model_version": ref.version,
            "model_run_id": ref.run_id,
            "input": cfg.input.table or resolve_location(cfg.input.path or ""),
            "output": _output(cfg),
            "batch_size": ctx.plan.batch_size,
            "on_invalid": cfg.quality.on_invalid,
            "max_invalid_fraction": cfg.quality.max_invalid_fraction,
        }

    def step(self, ctx: JobContext) -> ScoreResult:
        cfg, ds, plan = ctx.cfg, ctx.ds, ctx.plan
        canary = "challenger" in ctx.models
        log.info("scoring %s into %s", cfg.input.describe(), _output(cfg))
        scored = ctx.score()
        ctx.quarantine(scored)
        if canary:
            valid = apply_canary(scored.valid, cfg, plan, ctx.lineage("model"), ctx.lineage("challenger"))
        else:
            valid = with_lineage(scored.valid, ctx.lineage("model"))
        # Data skipping on keys and scalar scores ("find this entity", "scores above t"); not on lineage.
        stats_columns = [*cfg.output.key_columns, *(o.name for o in plan.outputs[:1] if o.kind == "scalar")]
        write_idempotent(
            valid,
            cfg.output,
            ds,
            commit_tag=ctx.run_id,
            stats_columns=stats_columns,
            merge_schema=canary,  # enabling a canary adds the `variant` column
        )
        rows = committed_rows(ctx.spark, cfg.output, ctx.run_id, ds)
        runtime = ctx.runtime()
        runtime["invalid_rows"] = float(scored.invalid)  # the count's, not the accumulator's (retries)
        if canary:
            runtime["canary_rows"] = float(canary_rows(ctx.spark, cfg, ds))
        ref = ctx.models["model"].ref
        duration = time.perf_counter() - ctx.started
        result = ScoreResult(
            rows,
            duration,
            _output(cfg),
            ref.requested_uri,
            ref.version,
            ctx.run_id,
            ds,
            runtime,
            scored.invalid,
        )
        ctx.tracker.log_metrics(
            {"rows_scored": rows, "duration_s": duration, "rows_per_s": result.rows_per_s, **runtime}
        )
        _log_summary(cfg, result)
        return result

    def summary(self, result: ScoreResult) -> str:
        return (
            f"scored {result.rows_scored} rows with {result.model_uri} (version {result.model_version}) "
            f"into {result.output} in {result.duration_s:.1f} s; {result.invalid_rows} invalid row(s) "
            f"quarantined; job run {result.job_run_id}"
        )


def _output(cfg: ScoringJobConfig) -> str:
    return cfg.output.table or resolve_location(cfg.output.path or "")


def _log_summary(cfg: ScoringJobConfig, result: ScoreResult) -> None:
    if result.rows_scored == 0 and result.invalid_rows == 0:
        log.warning(
            "partition %s of %s had no rows; the output partition is empty (a rerun that finds it empty "
            "changes nothing)",
            result.ds,
            cfg.input.describe(),
        )
    if result.invalid_rows:
        log.warning(
            "%d invalid row(s) written to quarantine %s",
            result.invalid_rows,
            cfg.quarantine_section().describe(),
        )
    rate = result.rows_per_s
    window = result.runtime.get("scoring_window_s", 0.0)
    if window > 0 and result.rows_scored:
        log.info(
            "scored %d rows in %.1f s (%.0f rows/s end to end): %.1f s scoring them (%.0f rows/s), %.1f s "
            "of fixed cost (session, input snapshot, worker start, model load, checks, commit)",
            result.rows_scored, result.duration_s, rate, window, result.rows_scored / window,
            max(0.0, result.duration_s - window),
        )  # fmt: skip
    else:
        log.info("scored %d rows in %.1f s (%.0f rows/s)", result.rows_scored, result.duration_s, rate)
    log_runtime(result.runtime)


JOB = ScoreJob()


def run(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None = None) -> ScoreResult:
    """Resolve the model, check the input, score, and write one run of the job; log it to MLflow.

    With ``quality.on_invalid: quarantine`` the scored rows are persisted once, counted, and only when the
    invalid fraction is within ``quality.max_invalid_fraction`` written: first the invalid rows to the
    quarantine table, then the valid ones to the output (the output commit is the last step, so the
    output only ever moves to a run whose quarantine rows are already in place). Above the limit the job
    fails and neither table changes.
    """
    return run_job(spark, cfg, ds, JOB)


def main(argv: Sequence[str] | None = None) -> int:
    """``batchscore score``: 0 on success, 2 on a user error (logged in one line, no traceback)."""
    return run_main(JOB, argv)
