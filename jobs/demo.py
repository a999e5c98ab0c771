"""The demo: two torch fraud models in the local registry, a synthetic input table, a real spark-submit run.

``batchscore demo`` is what ``make demo`` runs after setup. It is rerunnable: existing models and input are
reused unless ``--fresh`` is given.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from batchscore.jobs.config import MlflowSection
from batchscore.jobs.home import batchscore_home, packaged_conf
from batchscore.jobs.tracking import ensure_experiment, tracking_target

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

log = logging.getLogger("batchscore.demo")

N_FEATURES = 16
FEATURES = tuple(f"f{i}" for i in range(N_FEATURES))
MODEL_NAME = "fraud"
INPUT_PATH = "warehouse/transactions"


@dataclass(frozen=True)
class RegisteredDemoModels:
    champion_version: str
    challenger_version: str


def synthetic_transactions(rows: int, ds: str, seed: int, first_id: int = 0) -> pd.DataFrame:
    """Transactions with 16 numeric features and a fraud label drawn from a fixed logistic rule."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, N_FEATURES))
    weights = np.linspace(-1.5, 1.5, N_FEATURES)
    logits = features @ weights / 2.0 - 2.5 + 0.5 * features[:, 0] * features[:, 1]
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logits))).astype("int32")
    frame = pd.DataFrame(features, columns=list(FEATURES))
    frame.insert(0, "transaction_id", np.arange(first_id, first_id + rows, dtype="int64"))
    frame["label"] = label
    frame["ds"] = ds
    return frame


def train_fraud_model(hidden: int, epochs: int, seed: int, rows: int = 20_000) -> Any:
    """A small MLP classifier (``nn.Sequential``, so loading it needs no project code) trained on CPU."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    data = synthetic_transactions(rows, "1970-01-01", seed=seed)
    x = torch.tensor(data[list(FEATURES)].to_numpy(), dtype=torch.float32)
    y = torch.tensor(data["label"].to_numpy(), dtype=torch.float32).unsqueeze(1)
    model = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.BCELoss()
    for _ in range(epochs):
        for start in range(0, rows, 1024):
            optimizer.zero_grad()
            loss = loss_fn(model(x[start : start + 1024]), y[start : start + 1024])
            loss.backward()
            optimizer.step()
    return model.eval()


def fraud_signature() -> Any:
    """Named double inputs f0..f15 and one double output ``fraud_score``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in FEATURES]),
        outputs=Schema([ColSpec("double", "fraud_score")]),
    )


def log_and_register(model: Any, name: str, experiment_id: str, description: str) -> str:
    """Log ``model`` with the fraud signature in a training run and register a new version of ``name``."""
    import mlflow
    import mlflow.pytorch

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{description}"):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=fraud_signature(),
            registered_model_name=name,
            # pt2 (MLflow's default) needs a tensor signature; tabular models keep named columns.
            serialization_format="pickle",
        )
    return str(info.registered_model_version)


def register_demo_models(section: MlflowSection, fresh: bool = False) -> RegisteredDemoModels:
    """Train a champion and a challenger and point the ``champion``/``challenger`` aliases at them."""
    import mlflow
    from mlflow import MlflowClient

    target = tracking_target(section)
    client = MlflowClient(target.tracking_uri, target.registry_uri)
    mlflow.set_registry_uri(target.registry_uri)
    if not fresh:
        try:
            model = client.get_registered_model(MODEL_NAME)
            aliases = dict(model.aliases or {})
            if {"champion", "challenger"} <= aliases.keys():
                log.info("reusing registered model %r %s", MODEL_NAME, aliases)
                return RegisteredDemoModels(aliases["champion"], aliases["challenger"])
        except mlflow.exceptions.MlflowException:
            pass
    experiment_id = ensure_experiment(section.model_copy(update={"experiment": "batchscore-training"}))
    champion = log_and_register(train_fraud_model(32, 3, seed=1), MODEL_NAME, experiment_id, "champion")
    challenger = log_and_register(train_fraud_model(64, 5, seed=2), MODEL_NAME, experiment_id, "challenger")
    client.set_registered_model_alias(MODEL_NAME, "champion", champion)
    client.set_registered_model_alias(MODEL_NAME, "challenger", challenger)
    log.info("registered %s: champion=v%s challenger=v%s", MODEL_NAME, champion, challenger)
    return RegisteredDemoModels(champion, challenger)


def demo_dates(days: int, last: dt.date) -> list[str]:
    return [(last - dt.timedelta(days=days - 1 - i)).isoformat() for i in range(days)]


def write_demo_input(
    spark: SparkSession, path: str, rows_per_day: int, dates: Sequence[str], fresh: bool = False
) -> None:
    """Write the synthetic transactions as a Delta table partitioned by ``ds``. An existing table is kept,
    and only the partitions of ``dates`` it lacks are appended (the demo scores yesterday, so a table
    written on an earlier day lacks the newest dates)."""
    import pandas as pd
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    first_id = 0
    missing = list(dates)
    if not fresh and DeltaTable.isDeltaTable(spark, path):
        existing = spark.read.format("delta").load(path)
        present = {row["ds"] for row in existing.select("ds").distinct().collect()}
        missing = [ds for ds in dates if ds not in present]
        if not missing:
            log.info("reusing input table %s", path)
            return
        top = existing.agg(F.max("transaction_id")).collect()[0][0]
        first_id = 0 if top is None else int(top) + 1
        mode = "append"
    else:
        mode = "overwrite"
    frames = [
        synthetic_transactions(
            rows_per_day, ds, seed=100 + dates.index(ds), first_id=first_id + k * rows_per_day
        )
        for k, ds in enumerate(missing)
    ]
    df = spark.createDataFrame(pd.concat(frames, ignore_index=True))
    df.write.format("delta").mode(mode).partitionBy("ds").save(path)
    log.info("wrote %d rows over partitions %s to %s", rows_per_day * len(missing), missing, path)


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the demo registry and input, then score the latest partition through spark-submit."""
    from batchscore.jobs.config import load_job_config
    from batchscore.jobs.home import resolve_location
    from batchscore.jobs.runner import configure_logging
    from batchscore.jobs.session import spark_session
    from batchscore.jobs.submit import submit

    parser = argparse.ArgumentParser(prog="batchscore demo", description=main.__doc__)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="retrain models and rewrite the input")
    args = parser.parse_args(argv)
    configure_logging()
    started = time.perf_counter()
    demo_config = packaged_conf() / "jobs" / "fraud_nightly.yaml"
    cfg = load_job_config(demo_config)
    models = register_demo_models(cfg.mlflow, fresh=args.fresh)
    dates = demo_dates(args.days, dt.date.today() - dt.timedelta(days=1))
    with spark_session(cfg.spark.profile) as spark:
        write_demo_input(spark, resolve_location(INPUT_PATH), args.rows_per_day, dates, fresh=args.fresh)
    log.info("state in %s; scoring ds=%s through spark-submit", batchscore_home(), dates[-1])
    code = submit("score", ["--config", str(demo_config), "--ds", dates[-1]])
    print(
        f"demo {'finished' if code == 0 else 'FAILED'} in {time.perf_counter() - started:.0f} s: "
        f"model {MODEL_NAME} champion=v{models.champion_version} challenger=v{models.challenger_version}, "
        f"output {resolve_location(cfg.output.path or '')} (ds={dates[-1]})"
    )
    return code
