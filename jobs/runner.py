"""The job skeleton: arguments, config, session, resolve once, check, score, write, track, errors.

A scoring job (``score``, ``shadow``, and the jobs to come) is a :class:`ScoringJob` that supplies only its
own parts: which models it resolves, its plan, and its step (what it writes from the scored rows). The
runner does the rest in the same order for every job: names and ``--ds`` checked, each model alias
resolved once to a pinned version, the input opened and checked against the plan, the partition's files
listed, the job's MLflow run started, and the step run with worker errors turned into one-line errors.
:func:`main` maps a user error to one log line and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from batchscore.jobs import redact
from batchscore.jobs.config import load_job_config
from batchscore.jobs.errors import BatchscoreError, ConfigError
from batchscore.jobs.holding import held
from batchscore.jobs.inputs import ScoringInput
from batchscore.jobs.names import check_job_names
from batchscore.jobs.outputs import count_invalid, write_quarantine
from batchscore.jobs.planning import Lineage
from batchscore.jobs.registry import resolve_model
from batchscore.jobs.schema_check import check_input_schema
from batchscore.jobs.scoring import Keep, RuntimeStats, executor_errors, score, with_lineage
from batchscore.jobs.tables import validate_ds
from batchscore.jobs.tracking import JobRun, job_run, quiet_mlflow, tracking_target
from batchscore.udfs.validation import RAW_COLUMN, REASON_COLUMN

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from batchscore.jobs.config import ScoringJobConfig
    from batchscore.jobs.registry import ResolvedModel
    from batchscore.udfs.spec import ScoringPlan

log = logging.getLogger("batchscore.runner")

ResultT = TypeVar("ResultT")


def configure_logging(level: str = "INFO") -> None:
    """One progress line per stage on stderr, secrets masked, third-party chatter at WARNING."""
    # force: pyspark may have configured the root logger (to stdout) before our main runs.
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("py4j", "urllib3", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    redact.install()  # secrets from the environment and URL credentials never reach the log
    quiet_mlflow()


def guarded(body: Callable[[], int]) -> int:
    """``body()``, or 2 when it raises a user error (bad config, unknown model, missing input), which is
    logged in one line without a traceback."""
    try:
        return body()
    except BatchscoreError as exc:
        log.error("%s", exc)
        return 2


def job_parser(prog: str, description: str, *, ds_help: str | None = None) -> argparse.ArgumentParser:
    """The options every job takes: ``--config``, ``--set`` (repeatable), ``--log-level``, and ``--ds``
    when ``ds_help`` says what it picks."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="job config YAML, e.g. conf/jobs/fraud_nightly.yaml")
    if ds_help is not None:
        parser.add_argument("--ds", help=ds_help)
        parser.add_argument(
            "--ds-offset",
            type=int,
            default=0,
            metavar="DAYS",
            help="days added to --ds: a scheduler that passes the run's own date scores yesterday with -1",
        )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.batch_size=8192 (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


@dataclass(frozen=True)
class ScoredRows:
    """What a run scored: the valid rows (without lineage), how many (None until written, when nothing
    had to count them), how many are invalid, and every row with its reason (None without quarantine)."""

    valid: DataFrame
    rows: int | None
    invalid: int
    checked: DataFrame | None = None


@dataclass
class JobContext:
    """One run of a job, as its step sees it: the resolved models (the first is the one the plan scores
    with), the opened input, the plan, the MLflow run, and the workers' runtime stats."""

    spark: SparkSession
    cfg: ScoringJobConfig
    ds: str | None
    models: dict[str, ResolvedModel]
    source: ScoringInput
    plan: ScoringPlan
    tracker: JobRun
    keep: Keep
    stats: RuntimeStats | None = None  # set by score()
    started: float = field(default_factory=time.perf_counter)
    _lineages: dict[str, Lineage] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    def lineage(self, role: str) -> Lineage:
        """The lineage of the ``role`` model's rows; every model of a run shares one ``scored_at``."""
        if role not in self._lineages:
            first = next(iter(self._lineages.values()), None)
            scored_at = first.scored_at if first is not None else None
            self._lineages[role] = Lineage.for_model(self.models[role].ref, self.run_id, scored_at)
        return self._lineages[role]

    def runtime(self) -> dict[str, float]:
        """The workers' model loads, batch latencies and stage times of this run's scoring (after a write
        or count computed it)."""
        if self.stats is None:
            raise RuntimeError("the run has not scored anything yet")
        return self.stats.summary()

    def score(self, *, persist: bool = False) -> ScoredRows:
        """Score the input. Under ``quality.on_invalid: quarantine`` the rows are persisted and counted,
        and the job fails above ``max_invalid_fraction``; nothing is written yet (:meth:`quarantine`).
        ``persist`` keeps (and counts) the rows for a step that reads them more than once."""
        from pyspark.sql import functions as F

        quarantining = self.plan.on_invalid == "quarantine"
        ref = next(iter(self.models.values())).ref
        keep = self.keep if quarantining or persist else None
        self.stats = RuntimeStats()
        # Lineage columns are constants: added after the (persisted) scores, so the cache stays narrow.
        scored = score(self.source, ref, self.plan, lineage=None, stats=self.stats, keep=keep)
        if quarantining:
            total, invalid = count_invalid(scored, self.cfg)
            valid = scored.where(F.col(REASON_COLUMN).isNull()).drop(REASON_COLUMN, RAW_COLUMN)
            return ScoredRows(valid, total - invalid, invalid, scored)
        return ScoredRows(scored, scored.count() if persist else None, 0)

    def quarantine(self, scored: ScoredRows) -> None:
        """Replace the quarantine partition with the run's invalid rows (the first model's lineage): the
        first write of a run, so the output only moves to a run whose quarantine rows are in place."""
        if scored.checked is not None:
            lineage = self.lineage(next(iter(self.models)))
            write_quarantine(
                with_lineage(scored.checked, lineage), self.cfg, self.ds, self.run_id, scored.invalid
            )


def log_runtime(runtime: Mapping[str, float]) -> None:
    """One line of the workers' model loads, batch latencies and stage times, when they reported any."""
    if runtime.get("model_batches"):
        log.info(
            "model loads %d over %d worker(s); batch latency p50 %.1f ms, p99 %.1f ms; "
            "decode %.1f s, compute %.1f s, encode %.1f s",
            runtime["model_loads"],
            runtime["scoring_workers"],
            runtime["batch_latency_p50_ms"],
            runtime["batch_latency_p99_ms"],
            runtime["decode_total_s"],
            runtime["compute_total_s"],
            runtime["encode_total_s"],
        )


class ScoringJob(Generic[ResultT]):
    """A job that plugs into :func:`run_job`: override :meth:`plan` and :meth:`step`, and what differs."""

    name: ClassVar[str]
    description: ClassVar[str]
    ds_help: ClassVar[str] = "partition to score, YYYY-MM-DD (default: the whole input)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The job's own command-line options."""

    def check(self, cfg: ScoringJobConfig, ds: str | None) -> None:
        """Config the job needs beyond what validation checks, before anything is resolved or read."""

    def models(self, cfg: ScoringJobConfig) -> dict[str, str]:
        """Role -> model URI, each resolved once on the driver; the first role's model is scored with."""
        return {"champion": cfg.model.uri}

    def plan(
        self, cfg: ScoringJobConfig, models: Mapping[str, ResolvedModel], source: ScoringInput
    ) -> ScoringPlan:
        """The plan the workers run (for a pair of models, :func:`jobs.planning.pair_plan`'s, whose models
        are the first two roles); the runner checks the input against each model's part of it."""
        raise NotImplementedError

    def run_name(self, cfg: ScoringJobConfig, ds: str | None) -> str:
        return f"{cfg.name}-{ds or 'all'}"

    def params(self, ctx: JobContext) -> dict[str, Any]:
        """What the MLflow run records as parameters."""
        return {}

    def step(self, ctx: JobContext) -> ResultT:
        """Score, write and log metrics: what only this job does."""
        raise NotImplementedError

    def summary(self, result: ResultT) -> str:
        """What ``main`` prints on success."""
        return str(result)

    def exit_code(self, result: ResultT, args: argparse.Namespace) -> int:
        return 0


def _warn_if_executors_need_driver_disk(spark: SparkSession, tracking_uri: str, artifact_uri: str) -> None:
    """On a cluster, executors load the model themselves: a SQLite store or ``file:`` artifacts work only
    where every executor sees the driver's disk."""
    master = str(spark.conf.get("spark.master", None) or "local")
    local_files = ("sqlite:", "file:", "/")
    if master.startswith("local") or not (
        tracking_uri.startswith(local_files) or artifact_uri.startswith(local_files)
    ):
        return
    log.warning(
        "executors on %s load the model from %s (artifacts %s): that works only where every executor sees "
        "this disk; point mlflow.tracking_uri at an mlflow server with an artifact store they can reach",
        master, tracking_uri, artifact_uri,
    )  # fmt: skip


def run_job(spark: SparkSession, cfg: ScoringJobConfig, ds: str | None, job: ScoringJob[ResultT]) -> ResultT:
    """One run of ``job``: everything is checked and resolved before the MLflow run starts, so a user
    error leaves no run behind."""
    started = time.perf_counter()
    check_job_names(cfg)  # every name and path before any work, under the config key that gave it
    if ds is not None:
        validate_ds(ds)
    job.check(cfg, ds)
    target = tracking_target(cfg.mlflow)
    models = {
        role: resolve_model(uri, target.tracking_uri, target.registry_uri, timeout_s=target.timeout_s)
        for role, uri in job.models(cfg).items()
    }
    for role, resolved in models.items():
        ref = resolved.ref
        log.info("%s %s pinned to %s (run %s)", role, ref.requested_uri, ref.load_uri, ref.run_id)
        _warn_if_executors_need_driver_disk(spark, ref.tracking_uri, ref.artifact_uri)
    source = ScoringInput.open(spark, cfg.input, ds)
    plan = job.plan(cfg, models, source)
    parts = [part for _, part in plan.pair] if plan.pair else [plan]
    for resolved, part in zip(models.values(), parts, strict=False):
        check_input_schema(source, resolved, part, cfg)  # every problem at once, before any work
    if ds is not None:
        source.partition_files()  # a missing partition fails here, before the run starts
    with (
        job_run(cfg.mlflow, run_name=job.run_name(cfg, ds)) as tracker,
        held(spark, cfg, tracker.run_id) as keep,
    ):
        ctx = JobContext(spark, cfg, ds, models, source, plan, tracker, keep, started=started)
        tracker.log_params({"job": cfg.name, "ds": ds, **job.params(ctx)})
        with executor_errors():
            return job.step(ctx)


def shifted_ds(ds: str | None, offset: int) -> str | None:
    """``ds`` moved by ``offset`` days (``--ds-offset``); an offset without a ``--ds`` is an error."""
    if offset == 0:
        return ds
    if ds is None:
        raise ConfigError(f"expected --ds YYYY-MM-DD with --ds-offset {offset}, found no --ds")
    return (dt.date.fromisoformat(validate_ds(ds)) + dt.timedelta(days=offset)).isoformat()


def main(job: ScoringJob[Any], argv: Sequence[str] | None = None) -> int:
    """``batchscore <job>``: 0 on success (or the job's own exit code), 2 on a user error."""
    from batchscore.jobs.session import spark_session

    parser = job_parser(f"batchscore {job.name}", job.description, ds_help=job.ds_help)
    job.add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    def body() -> int:
        cfg = load_job_config(args.config, args.overrides)
        with spark_session(cfg.spark.profile, cfg.spark.conf) as spark:
            result = run_job(spark, cfg, shifted_ds(args.ds, args.ds_offset), job)
        print(redact.redact(job.summary(result)))
        return job.exit_code(result, args)

    return guarded(body)
