"""The shadow job: champion and challenger score the same partition in one pass, and are compared.

``batchscore shadow --config conf/jobs/<job>.yaml --ds YYYY-MM-DD`` (or ``batchscore submit shadow …``)
scores the input once with both models resident in every worker, writes the champion's scores to the
production output and the challenger's to ``shadow.output`` (same columns and lineage), appends one row per
``ds`` and model pair to ``shadow.comparison`` (distribution, agreement, drift and, with a label, quality
metrics, plus the verdict against ``shadow.thresholds``), and logs the metrics, PNG plots and a Markdown
report to the job's MLflow run. Exit code 0 whatever the verdict (``--fail-on-verdict``: 3 on a fail).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script (spark-submit jobs/shadow.py): do not shadow top-level packages

import argparse
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jobs.compare import METRIC_COLUMNS, Comparison, compare
from jobs.config import ScoringJobConfig
from jobs.errors import TableLocationError
from jobs.file_scan import open_input
from jobs.home import batchscore_home, resolve_location
from jobs.names import check_job_names
from jobs.registry import resolve_model
from jobs.report import write_markdown, write_plots
from jobs.schema_check import check_input_schema
from jobs.score import (
    Lineage,
    executor_errors,
    kept,
    pair_plan,
    partition_files,
    run_job,
    score_input,
    stats_accumulator,
    with_lineage,
    write_quarantine,
)
from jobs.tables import validate_ds, write_idempotent
from jobs.tracking import job_run, tracking_target
from udfs.stats import summary_metrics
from udfs.validation import RAW_COLUMN, REASON_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("batchscore.shadow")

_SAFE_LITERAL = re.compile(r"^[A-Za-z0-9_.:/@-]*$")


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


def _literal(value: str | None) -> str:
    if value is None or not _SAFE_LITERAL.match(value):
        raise TableLocationError(
            f"expected a model identifier of letters, digits and _.:/@-, found {value!r}"
        )
    return value


def write_comparison(spark: SparkSession, cfg: ScoringJobConfig, row: dict[str, Any], ds: str | None) -> None:
    """Replace this ds and model pair's row of the comparison table (one Delta commit)."""
    from pyspark.sql import types as T

    assert cfg.shadow is not None
    section = cfg.shadow.comparison
    fields = [
        T.StructField("model_name", T.StringType()),
        T.StructField("champion_uri", T.StringType()),
        T.StructField("champion_version", T.StringType()),
        T.StructField("challenger_uri", T.StringType()),
        T.StructField("challenger_version", T.StringType()),
        T.StructField("rows_scored", T.LongType()),
        T.StructField("invalid_rows", T.LongType()),
        *(T.StructField(name, T.DoubleType()) for name in METRIC_COLUMNS),
        T.StructField("decision_threshold", T.DoubleType()),
        T.StructField("thresholds", T.StringType()),
        T.StructField("verdict", T.StringType()),
        T.StructField("failed_checks", T.StringType()),
        T.StructField("report", T.StringType()),
        T.StructField("job_run_id", T.StringType()),
        T.StructField("compared_at", T.TimestampType()),
        T.StructField(section.partition_column or "ds", T.StringType()),
    ]
    schema = T.StructType(fields)
    values = [row.get(f.name) for f in fields]
    df = spark.createDataFrame([tuple(values)], schema)
    champion, challenger = _literal(row["champion_uri"]), _literal(row["challenger_uri"])
    predicate = f"champion_uri = '{champion}' AND challenger_uri = '{challenger}'"
    writer = df.write.format("delta").mode("overwrite").option("userMetadata", row["job_run_id"])
    column = section.partition_column
    if column:
        writer = writer.partitionBy(column)
        if ds is not None:
            predicate = f"`{column}` = '{validate_ds(ds)}' AND {predicate}"
    writer = writer.option("replaceWhere", predicate)
    if section.table is not None:
        writer.saveAsTable(section.table)
    else:
        writer.save(resolve_location(section.path or ""))


def run(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None = None) -> ShadowResult:
    """Score ``ds`` with champion and challenger in one pass; write both outputs; compare; report."""
    import numpy as np
    from pyspark.sql import functions as F

    if cfg.shadow is None:
        raise TableLocationError(f"job {cfg.name!r} has no 'shadow' section; the shadow job needs one")
    shadow = cfg.shadow
    started = time.perf_counter()
    check_job_names(cfg)  # every name and path before any work, under the config key that gave it
    if ds is not None:
        validate_ds(ds)
    target = tracking_target(cfg.mlflow)
    champion = resolve_model(
        cfg.model.uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s
    )
    challenger = resolve_model(
        shadow.challenger_uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s
    )
    log.info("champion %s -> %s; challenger %s -> %s", cfg.model.uri, champion.ref.load_uri,
             shadow.challenger_uri, challenger.ref.load_uri)  # fmt: skip
    df = open_input(spark, cfg.input, ds)
    label = [shadow.label_column] if shadow.label_column else []
    plan, first, second = pair_plan(
        champion, challenger, cfg, cfg.shadow.challenger_uri, df.columns, extra=label
    )
    check_input_schema(df, champion, first, cfg)
    check_input_schema(df, challenger, second, cfg)
    if shadow.label_column and shadow.label_column not in df.columns:
        raise TableLocationError(f"shadow.label_column {shadow.label_column!r} is not an input column")
    files = partition_files(df, cfg.input, ds) if ds is not None else None
    score_column = first.outputs[0].name
    shadow_column = plan.outputs[1].name
    keep = list(first.passthrough_columns)
    with job_run(cfg.mlflow, run_name=f"{cfg.name}-shadow-{ds or 'all'}") as tracker:
        tracker.log_params(
            {
                "job": cfg.name,
                "champion_uri": cfg.model.uri,
                "champion_load_uri": champion.ref.load_uri,
                "challenger_uri": shadow.challenger_uri,
                "challenger_load_uri": challenger.ref.load_uri,
                "ds": ds,
                "decision_threshold": shadow.decision_threshold,
                "thresholds": json.dumps(shadow.thresholds, sort_keys=True),
            }
        )
        stats = stats_accumulator(spark)
        lineage = Lineage.for_model(champion.ref, tracker.run_id)
        challenger_lineage = Lineage.for_model(challenger.ref, tracker.run_id, lineage.scored_at)
        with kept() as persist_scores:
            scored = score_input(
                spark,
                df,
                cfg,
                ds,
                (champion.ref, plan),
                lineage=None,
                stats=stats,
                files=files,
                keep=persist_scores,
            )
            with executor_errors():
                total, invalid = write_quarantine(with_lineage(scored, lineage), cfg, ds, tracker.run_id)
                rows = total - invalid
                valid = scored.where(F.col(REASON_COLUMN).isNull()).drop(REASON_COLUMN, RAW_COLUMN)
                stats_columns = [*cfg.output.key_columns, score_column]
                write_idempotent(
                    with_lineage(valid.select(*keep, score_column), lineage),
                    cfg.output,
                    ds,
                    commit_tag=tracker.run_id,
                    stats_columns=stats_columns,
                )
                write_idempotent(
                    with_lineage(
                        valid.select(*keep, F.col(shadow_column).alias(score_column)), challenger_lineage
                    ),
                    shadow.output,
                    ds,
                    commit_tag=tracker.run_id,
                    stats_columns=stats_columns,
                )
                sample = (
                    valid
                    if rows <= shadow.max_compare_rows
                    else valid.sample(fraction=shadow.max_compare_rows / rows, seed=17)
                )
                frame: Any = sample.select(score_column, shadow_column, *label).toPandas()
        labels = None
        if shadow.label_column:
            frame = frame[frame[shadow.label_column].notna()]
            labels = frame[shadow.label_column].to_numpy(dtype=np.float64)
        champion_scores = frame[score_column].to_numpy(dtype=np.float64)
        challenger_scores = frame[shadow_column].to_numpy(dtype=np.float64)
        comparison = compare(
            champion_scores,
            challenger_scores,
            threshold=shadow.decision_threshold,
            thresholds=shadow.thresholds,
            labels=labels,
        )
        folder = batchscore_home() / "reports" / cfg.name / (ds or "all") / tracker.run_id
        plots = write_plots(champion_scores, challenger_scores, labels, folder) if len(frame) else []
        context = {
            "model_name": champion.ref.name,
            "champion_version": champion.ref.version,
            "challenger_version": challenger.ref.version,
            "ds": ds,
            "rows_scored": rows,
            "job_run_id": tracker.run_id,
        }
        report = write_markdown(comparison, context, plots, folder / "report.md")
        runtime = summary_metrics(stats.value)
        tracker.log_metrics(
            {
                **{k: v for k, v in comparison.metrics.items() if np.isfinite(v)},
                "rows_scored": rows,
                "invalid_rows": invalid,
                "verdict_pass": 1.0 if comparison.verdict == "pass" else 0.0,
                "duration_s": time.perf_counter() - started,
                **{k: v for k, v in runtime.items() if k not in ("invalid_rows",)},
            }
        )
        tracker.log_artifacts(folder, "shadow_report")
        write_comparison(
            spark,
            cfg,
            {
                "model_name": champion.ref.name,
                "champion_uri": champion.ref.load_uri,
                "champion_version": champion.ref.version,
                "challenger_uri": challenger.ref.load_uri,
                "challenger_version": challenger.ref.version,
                "rows_scored": rows,
                "invalid_rows": invalid,
                **{name: comparison.metrics.get(name) for name in METRIC_COLUMNS},
                "decision_threshold": shadow.decision_threshold,
                "thresholds": json.dumps(shadow.thresholds, sort_keys=True),
                "verdict": comparison.verdict,
                "failed_checks": "; ".join(comparison.failed),
                "report": str(report),
                "job_run_id": tracker.run_id,
                "compared_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                (shadow.comparison.partition_column or "ds"): ds,
            },
            ds,
        )
    return ShadowResult(
        comparison, rows, invalid, tracker.run_id, report, champion.ref.load_uri, challenger.ref.load_uri, ds
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batchscore shadow", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="job config YAML with a 'shadow' section")
    parser.add_argument("--ds", help="partition to compare, YYYY-MM-DD (default: the whole input)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--fail-on-verdict", action="store_true", help="exit 3 when the verdict is fail")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_job(args, run)
    if result is None:
        return 2
    failed = f" ({'; '.join(result.comparison.failed)})" if result.comparison.failed else ""
    print(
        f"shadow {result.champion_uri} vs {result.challenger_uri} on {result.rows_scored} rows: "
        f"verdict {result.verdict}{failed}; report {result.report}; job run {result.job_run_id}"
    )
    print(json.dumps({"verdict": result.verdict, "failed": list(result.comparison.failed),
                      "job_run_id": result.job_run_id, "report": str(result.report)}))  # fmt: skip
    return 3 if args.fail_on_verdict and result.verdict == "fail" else 0


if __name__ == "__main__":
    raise SystemExit(main())
