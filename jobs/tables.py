"""Tables by name: checked names, SQL quoting, and the table a config section points at."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from batchscore.jobs.errors import TableLocationError
from batchscore.jobs.home import resolve_location
from batchscore.jobs.names import COLUMN_NAME, TABLE_NAME

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from batchscore.jobs.config import TableSection


def validate_table_name(name: str) -> str:
    if not TABLE_NAME.match(name):
        raise TableLocationError(f"expected a table name like [catalog.][schema.]table, found {name!r}")
    return name


def validate_column(name: str) -> str:
    if not COLUMN_NAME.match(name):
        raise TableLocationError(f"expected a column name of letters, digits and '_', found {name!r}")
    return name


def validate_ds(ds: str) -> str:
    """A partition date must be ``YYYY-MM-DD``; it is used in a Delta ``replaceWhere`` predicate."""
    try:
        dt.date.fromisoformat(ds)
    except ValueError:
        raise TableLocationError(f"expected --ds as YYYY-MM-DD, found {ds!r}") from None
    if len(ds) != 10:
        raise TableLocationError(f"expected --ds as YYYY-MM-DD, found {ds!r}")
    return ds


def read_table(spark: SparkSession, section: TableSection, data_format: str = "delta") -> DataFrame:
    """The table a config section names, by catalog name or by location."""
    if section.table is not None:
        return spark.read.table(validate_table_name(section.table))
    assert section.path is not None
    return spark.read.format(data_format).load(resolve_location(section.path))


def sql_name(name: str) -> str:
    """A column name as a SQL identifier (backticks, any inner backtick doubled)."""
    return "`" + name.replace("`", "``") + "`"


def sql_string(value: str) -> str:
    """A value as a SQL string literal (backslashes and quotes escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_target(section: TableSection) -> str:
    """The table of ``section`` as SQL names it: its catalog name, or ``delta.`<path>```."""
    if section.table is not None:
        return validate_table_name(section.table)
    location = resolve_location(section.path or "")
    if "`" in location:
        raise TableLocationError(f"expected a table path without backticks, found {location!r}")
    return f"delta.`{location}`"


_NOT_A_TABLE = ("DELTA_MISSING_DELTA_TABLE", "DELTA_PATH_DOES_NOT_EXIST", "PATH_NOT_FOUND")


def table_exists(spark: SparkSession, section: TableSection) -> bool:
    """Whether the Delta table of ``section`` exists (by catalog name, or at its path through SQL's
    ``DESCRIBE DETAIL``, which any kind of session runs)."""
    from pyspark.errors import AnalysisException

    if section.table is not None:
        return bool(spark.catalog.tableExists(validate_table_name(section.table)))
    try:
        spark.sql(f"DESCRIBE DETAIL {sql_target(section)}").collect()
    except AnalysisException as exc:
        if any(code in str(exc) for code in _NOT_A_TABLE):
            return False
        raise
    return True
