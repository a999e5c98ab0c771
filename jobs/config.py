"""Job and Spark-profile configuration: YAML files validated on load.

A wrong key or type is a :class:`~jobs.errors.ConfigError` naming the key and the file. ``${VAR}`` and
``${VAR:-default}`` in string values are taken from the environment, so secrets and cluster paths stay out
of the files. ``--set a.b=value`` overrides are applied before validation, so they are checked too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchscore.jobs.errors import ConfigError
from batchscore.jobs.home import packaged_conf

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSection(StrictModel):
    """The executor's model server (``model.sharing: executor``)."""

    max_batch_size: int | None = Field(
        None, ge=1, description="rows per model batch, coalesced across tasks (default: model.batch_size)"
    )
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="how long a request waits for others to fill its model batch"
    )
    idle_timeout_s: float = Field(600.0, gt=0, description="the server exits after this long idle")
    start_timeout_s: float = Field(600.0, gt=0, description="for a new server to load its model and answer")
    request_timeout_s: float = Field(
        300.0, gt=0, description="for one request's answer; a server that takes longer is killed as hung"
    )
    threads: int = Field(0, ge=0, description="torch threads of a CPU server (0: the executor's cores)")
    shared_memory_min_bytes: int | None = Field(
        0, ge=0, description="frames of at least this many bytes go through shared memory (a memfd) instead "
        "of the socket (0: all; null: none; Linux only)",
    )  # fmt: skip


class ModelSection(StrictModel):
    uri: str = Field(description="models:/name@alias, models:/name/version or runs:/run_id/path")
    batch_size: int = Field(4096, ge=1, description="rows per model call, independent of Arrow batches")
    prediction_column: str = Field("prediction", description="output name when the signature has none")
    device: str = Field("auto", description="auto (task GPU, else CPU), cpu, cuda or cuda:N")
    autocast: Literal["bf16", "fp16"] | None = Field(None, description="torch.autocast dtype for the model")
    prefetch: int = Field(2, ge=0, description="Arrow batches decoded ahead of the model (0: none)")
    cpu_kernels: Literal["onednn", "torch"] = Field(
        "onednn",
        description="float32 models on CPU: onednn (linear layers through oneDNN's prepacked kernels, plain "
        "MLPs fused; float32 rounding of the module's outputs, checked) or torch (the module's own ops)",
    )
    sharing: Literal["worker", "executor"] = Field(
        "worker",
        description="worker: each Python worker holds its own copy of the model; executor: one model "
        "server per executor and device serves all of its tasks, batching their rows together (torch models)",
    )
    server: ServerSection = Field(default_factory=ServerSection, description="model.sharing: executor")

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, found {device!r}")
        return device

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if not uri.startswith(("models:/", "runs:/")):
            raise ValueError(f"expected a models:/ or runs:/ URI, found {uri!r}")
        return uri


class TableSection(StrictModel):
    """A table given either by ``path`` (Delta/Parquet location) or by catalog ``table`` name."""

    path: str | None = Field(
        None, description="location: absolute, a URI (s3://…), or relative to BATCHSCORE_HOME/warehouse"
    )
    table: str | None = Field(None, description="catalog table name, [catalog.][schema.]table")
    partition_column: str | None = Field(
        "ds", description="the column --ds names a partition of (null: unpartitioned)"
    )

    @model_validator(mode="after")
    def _exactly_one_location(self) -> TableSection:
        if (self.path is None) == (self.table is None):
            raise ValueError(
                f"expected exactly one of 'path' or 'table', found path={self.path!r}, table={self.table!r}"
            )
        return self

    def describe(self) -> str:
        from batchscore.jobs.home import resolve_location

        return self.table if self.table is not None else f"path {resolve_location(self.path or '')}"


class InputSection(TableSection):
    """The table a job scores: exactly one of path or table."""

    format: Literal["delta", "parquet"] = Field("delta", description="the input's format (for path)")
    read_mode: Literal["auto", "files", "dataframe"] = Field(
        "auto",
        description="files: tasks read the Delta table's Parquet files with pyarrow; "
        "dataframe: through Spark; auto: files when the table allows it",
    )
    feature_columns: list[str] | None = Field(
        None, description="defaults to the column names of the model's input signature"
    )
    allow_extra_columns: bool = Field(
        True, description="false: an input column the job does not use is a schema error"
    )


class OutputSection(TableSection):
    """The Delta table of the scores: exactly one of path or table."""

    key_columns: list[str] = Field(
        min_length=1, description="entity keys copied to the output; a row with a null key is invalid"
    )
    passthrough_columns: list[str] = Field(
        default_factory=list, description="other input columns copied to the output"
    )


class QuarantineSection(TableSection):
    """Where invalid rows go: a Delta table, by path or catalog name."""


class QualitySection(StrictModel):
    """What happens to rows the model cannot take."""

    on_invalid: Literal["quarantine", "fail"] = Field(
        "quarantine",
        description="rows with null/NaN/inf features, wrong array lengths or that the model rejects: "
        "quarantine them (the job goes on) or fail the job",
    )
    max_invalid_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="above this fraction of invalid rows the job fails, writing nothing"
    )
    quarantine: QuarantineSection | None = Field(
        None, description="default: the output's path or table name with a _quarantine suffix"
    )
    hold: Literal["auto", "persist", "stage"] = Field(
        "auto",
        description="how a run keeps the scored rows it reads more than once (to count the invalid ones, "
        "then write quarantine and output; the shadow job's sample and comparison): persist (Spark's "
        "cache), stage (written once to a Delta staging table and read back; no cache, as Databricks "
        "serverless asks), auto: stage over Spark Connect, persist on a classic session",
    )
    staging: QuarantineSection | None = Field(
        None,
        description="where hold: stage writes a run's staging Delta tables (one per scored frame, removed "
        "as the run ends): folders run=<id>/<n> under this path, or tables <name>_<id>_<n>; default: the "
        "output's path or table name with a _staging suffix",
    )


DEFAULT_THRESHOLDS = {"max_psi": 0.25, "max_ks": 0.2, "min_agreement": 0.9, "min_auc_delta": -0.01}


class ShadowSection(StrictModel):
    """Champion/challenger comparison: the job's ``model`` is the champion."""

    challenger_uri: str = Field(description="models:/name@challenger, models:/name/version or runs:/…")
    output: TableSection = Field(description="the challenger's scores (same columns as the output)")
    comparison: TableSection = Field(description="one row per ds and model pair: metrics and verdict")
    decision_threshold: float = Field(0.5, description="score at or above which a row is 'positive'")
    label_column: str | None = Field(None, description="input column with the true label, when known")
    max_compare_rows: int = Field(
        5_000_000, ge=1, description="metrics on all rows up to this many, else on a uniform sample"
    )
    thresholds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS),
        description="verdict checks, e.g. max_psi, max_ks, min_agreement, min_spearman, min_auc_delta",
    )

    @field_validator("challenger_uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        return ModelSection._known_scheme(uri)

    @field_validator("thresholds")
    @classmethod
    def _known_checks(cls, thresholds: dict[str, float]) -> dict[str, float]:
        from batchscore.jobs.compare import CHECKS

        unknown = sorted(set(thresholds) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; expected some of {sorted(CHECKS)}")
        return thresholds


class CanarySection(StrictModel):
    """Route a stable fraction of entities to the challenger in the nightly job."""

    challenger_uri: str = Field(description="models:/name@challenger, models:/name/version or runs:/…")
    fraction: float = Field(ge=0.0, le=1.0, description="share of entities scored by the challenger")
    key_column: str | None = Field(None, description="entity key to hash (default: the first output key)")
    salt: str = Field("batchscore-canary", description="change it to draw a new, independent split")

    @field_validator("challenger_uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        return ModelSection._known_scheme(uri)


class MlflowSection(StrictModel):
    """The MLflow tracking server and model registry, and the job's own run."""

    tracking_uri: str | None = Field(None, description="default: SQLite in BATCHSCORE_HOME")
    registry_uri: str | None = Field(None, description="default: the tracking URI")
    experiment: str = Field("batchscore", description="the experiment of the job's runs")
    artifact_location: str | None = Field(None, description="for a new experiment; default: home/mlartifacts")
    log_run: bool = Field(True, description="false: no MLflow run (job_run_id is then a random id)")
    timeout_s: float = Field(
        60.0,
        gt=0,
        description="the longest a job waits on an MLflow server that fails or does not answer, retries "
        "included, before it stops with an error naming the HTTP failure",
    )
    stale_run_hours: float = Field(
        24.0,
        gt=0,
        description="a run of the same job and ds still RUNNING after this long was abandoned by a killed "
        "job (one from a process gone on this host is ended at once): the next run marks it KILLED",
    )


class SparkSection(StrictModel):
    """The Spark session a job creates (an active session, e.g. a notebook's, is used as it is)."""

    profile: str = Field("local", description="conf/spark/<profile>.yaml, or a path to a profile YAML")
    conf: dict[str, str] = Field(
        default_factory=dict,
        description="Spark settings on top of the profile's, for a session the job creates",
    )


class ScoringJobConfig(StrictModel):
    """One scoring job: ``conf/jobs/<name>.yaml``."""

    def quarantine_section(self) -> QuarantineSection:
        """The configured quarantine table, or the output's location with a ``_quarantine`` suffix."""
        return self.quality.quarantine or self._beside_output("_quarantine", self.output.partition_column)

    def staging_section(self) -> QuarantineSection:
        """The configured staging table (``hold: stage``), or the output's location with ``_staging``."""
        return self.quality.staging or self._beside_output("_staging", None)

    def _beside_output(self, suffix: str, partition_column: str | None) -> QuarantineSection:
        out = self.output
        if out.table is not None:
            return QuarantineSection(table=f"{out.table}{suffix}", partition_column=partition_column)
        path = (out.path or "").rstrip("/")
        return QuarantineSection(path=f"{path}{suffix}", partition_column=partition_column)

    name: str = Field(description="the job's name: MLflow run names, report folders")
    model: ModelSection = Field(description="the model to score with and how to call it")
    input: InputSection
    output: OutputSection
    quality: QualitySection = Field(default_factory=QualitySection)
    shadow: ShadowSection | None = Field(
        None, description="champion/challenger comparison (batchscore shadow)"
    )
    canary: CanarySection | None = Field(
        None, description="nightly job: a stable fraction of entities scored by the challenger"
    )
    mlflow: MlflowSection = Field(default_factory=MlflowSection)
    spark: SparkSection = Field(default_factory=SparkSection)


class SparkProfile(StrictModel):
    """A named Spark setup: ``conf/spark/<profile>.yaml``."""

    master: str | None = Field(None, description="omit to let spark-submit or the cluster decide")
    app_name: str = Field("batchscore", description="the Spark application's name")
    delta: bool = Field(True, description="add Delta Lake's cached jars and SQL extensions")
    conf: dict[str, str] = Field(default_factory=dict, description="Spark settings (booleans as true/false)")

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, conf: Any) -> Any:
        if isinstance(conf, Mapping):
            return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in conf.items()}
        return conf


def expand_env(value: Any, fallback: Mapping[str, str] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML document.

    ``fallback`` supplies values for variables the environment does not set (before ``:-default``).
    """
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if fallback and name in fallback:
                return fallback[name]
            if default is not None:
                return default
            raise ConfigError(f"environment variable {name!r} is referenced but not set")

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, list):
        return [expand_env(v, fallback) for v in value]
    if isinstance(value, dict):
        return {k: expand_env(v, fallback) for k, v in value.items()}
    return value


def apply_overrides(document: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides; values are parsed as YAML scalars (``3`` is an int)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected an override of the form key.path=value, found {item!r}")
        node = document
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return document


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(document).__name__}")
    return document


def _validation_message(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: invalid configuration"]
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        elif error["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            lines.append(f"  - {key}: {error['msg']} (found {error.get('input')!r})")
    return "\n".join(lines)


def load_job_config(path: str | Path, overrides: Iterable[str] = ()) -> ScoringJobConfig:
    """Load and validate a scoring job config, applying ``--set`` overrides first."""
    path = Path(path)
    document = apply_overrides(expand_env(_read_yaml(path)), overrides)
    try:
        return ScoringJobConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(_validation_message(path, exc)) from None


def conf_dir() -> Path:
    """The folder of named configs: ``$BATCHSCORE_CONF_DIR`` or the project's ``conf/``."""
    return Path(os.environ.get("BATCHSCORE_CONF_DIR") or packaged_conf())


def load_spark_profile(name_or_path: str) -> SparkProfile:
    """Load a Spark profile by name (``conf/spark/<name>.yaml``) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = conf_dir() / "spark" / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (conf_dir() / "spark").glob("*.yaml"))
            raise ConfigError(f"unknown Spark profile {name_or_path!r}; expected one of {known}")
    try:
        # ${BATCHSCORE_CONF_DIR} lets a profile name files beside it (e.g. a GPU discovery script).
        fallback = {"BATCHSCORE_CONF_DIR": str(conf_dir())}
        return SparkProfile.model_validate(expand_env(_read_yaml(path), fallback))
    except ValidationError as exc:
        raise ConfigError(_validation_message(path, exc)) from None
