"""Executor-side code: what runs inside Spark's Python workers.

Nothing here creates a SparkSession or resolves aliases. Heavy libraries (torch, mlflow) are imported inside
the functions that run on the worker, so this package imports without pyspark or mlflow.
"""
