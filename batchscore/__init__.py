"""batchscore: batch model scoring on Apache Spark.

The installed package is ``batchscore``: ``batchscore.jobs`` (driver side) and ``batchscore.udfs`` (what runs
inside Python workers), with the default ``conf/`` and the Airflow DAG files as package data. In the
repository they are the top-level folders ``jobs/``, ``udfs/``, ``conf/`` and ``airflow_dags/``.
"""
