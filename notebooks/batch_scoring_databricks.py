# Databricks notebook source
# MAGIC %md
# MAGIC # batchscore on Databricks
# MAGIC Scores one partition of a Delta table with a registered model and writes the scores (with lineage)
# MAGIC to a Delta table, replacing that partition only. Parameters come from widgets on Databricks and from
# MAGIC `BATCHSCORE_<NAME>` environment variables (or the defaults) anywhere else, so this file also runs
# MAGIC as a plain script on local Spark: `python notebooks/batch_scoring_databricks.py`.

# COMMAND ----------

import os

DEFAULTS = {
    "model_uri": "models:/fraud@champion",
    "input_path": "",  # default: $BATCHSCORE_HOME/warehouse/transactions
    "output_path": "",  # default: $BATCHSCORE_HOME/warehouse/fraud_scores_notebook
    "ds": "2026-11-29",
    "prediction_column": "fraud_score",
}


def parameter(name: str) -> str:
    """A widget's value on Databricks; elsewhere ``$BATCHSCORE_<NAME>`` or the default."""
    try:
        widgets = dbutils.widgets  # type: ignore[name-defined]  # Databricks injects dbutils
    except NameError:
        return os.environ.get(f"BATCHSCORE_{name.upper()}", DEFAULTS[name])
    widgets.text(name, DEFAULTS[name])
    return str(widgets.get(name))


params = {name: parameter(name) for name in DEFAULTS}
print(params)

# COMMAND ----------

from pyspark.sql import SparkSession  # noqa: E402

from batchscore.jobs.api import score  # noqa: E402
from batchscore.jobs.home import batchscore_home  # noqa: E402
from batchscore.jobs.session import get_or_create_session  # noqa: E402

# Databricks: the notebook's session. Elsewhere: a local one, with Delta.
spark = SparkSession.getActiveSession() or get_or_create_session("local", {"spark.ui.enabled": "false"})[0]
input_path = params["input_path"] or str(batchscore_home() / "warehouse" / "transactions")
output_path = params["output_path"] or str(batchscore_home() / "warehouse" / "fraud_scores_notebook")
ds = params["ds"]
# Serverless, standard access mode and Databricks Connect give a Spark Connect session; the code is the same.
print("session:", "Spark Connect" if ".connect." in type(spark).__module__ else "classic")

# COMMAND ----------

from batchscore.jobs.tables import validate_ds  # noqa: E402

df = spark.read.format("delta").load(input_path).where(f"ds = '{validate_ds(ds)}'")
scored = score(df, params["model_uri"], prediction_column=params["prediction_column"])
keys = ["transaction_id", params["prediction_column"], "model_name", "model_version", "scored_at", "ds"]
(
    scored.where("_invalid_reason IS NULL")
    .select(*keys)
    .write.format("delta")
    .mode("overwrite")
    .option("replaceWhere", f"ds = '{ds}'")
    .partitionBy("ds")
    .save(output_path)
)
written = spark.read.format("delta").load(output_path).where(f"ds = '{ds}'").count()
print(f"wrote {written} rows for ds={ds} to {output_path}")
