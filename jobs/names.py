"""Every table name, path and column name a job config gives, checked before any work is done.

A bad name found after a partition was scored wastes the run, and a message about a derived name (the
quarantine table) or a Delta schema error does not say what to fix. :func:`check_job_names` reports every
problem at once, each under the config key the user wrote.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from batchscore.jobs.errors import TableLocationError
from batchscore.jobs.home import resolve_location

if TYPE_CHECKING:
    from batchscore.jobs.config import ScoringJobConfig, TableSection

# catalog.schema.table, each part a plain identifier: nothing that could close a quote or start SQL.
TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _tables(cfg: ScoringJobConfig) -> Iterator[tuple[str, TableSection]]:
    """(config key, section) of every table the job reads or writes; the input first."""
    yield "input", cfg.input
    yield "output", cfg.output
    if cfg.quality.quarantine is not None:
        yield "quality.quarantine", cfg.quality.quarantine
    elif cfg.quality.on_invalid == "quarantine":
        yield "output (its quarantine table)", cfg.quarantine_section()
    if cfg.quality.staging is not None:
        yield "quality.staging", cfg.quality.staging
    elif cfg.quality.hold != "persist":
        yield "output (its staging table)", cfg.staging_section()
    if cfg.shadow is not None:
        yield "shadow.output", cfg.shadow.output
        yield "shadow.comparison", cfg.shadow.comparison


def _location(section: TableSection) -> str:
    """What identifies a table: its lower-cased catalog name, or its path made absolute and normal."""
    if section.table is not None:
        return "table " + section.table.lower()
    location = resolve_location(section.path or "")
    if location.startswith("file:"):
        location = re.sub(r"^file:(//)?", "", location)
    return "path " + (os.path.normpath(location) if "://" not in location else location.rstrip("/"))


def name_problems(cfg: ScoringJobConfig) -> list[str]:
    """One line per bad name, path or column, or table used twice; empty when all are fine."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for key, section in _tables(cfg):
        if section.table is not None and not TABLE_NAME.match(section.table):
            problems.append(
                f"{key}.table: expected a table name like [catalog.][schema.]table, found {section.table!r}"
            )
        if section.path is not None and (not section.path.strip() or "`" in section.path):
            problems.append(f"{key}.path: expected a path or URI without backticks, found {section.path!r}")
        column = section.partition_column
        if column is not None and not COLUMN_NAME.match(column):
            problems.append(f"{key}.partition_column: expected letters, digits and '_', found {column!r}")
        location = _location(section)
        if location in seen:
            problems.append(
                f"{key}: is the same table as {seen[location]} ({location}); a job must not write "
                + ("its own input" if seen[location] == "input" else "two outputs into one table")
            )
        seen.setdefault(location, key)
    columns = [("output.key_columns", c) for c in cfg.output.key_columns]
    if cfg.canary is not None and cfg.canary.key_column is not None:
        columns.append(("canary.key_column", cfg.canary.key_column))
    if cfg.shadow is not None and cfg.shadow.label_column is not None:
        columns.append(("shadow.label_column", cfg.shadow.label_column))
    for key, name in columns:
        if not COLUMN_NAME.match(name):
            problems.append(f"{key}: expected column names of letters, digits and '_', found {name!r}")
    return problems


def check_job_names(cfg: ScoringJobConfig) -> None:
    """Raise one :class:`TableLocationError` listing every problem of :func:`name_problems`."""
    problems = name_problems(cfg)
    if problems:
        raise TableLocationError(
            f"job {cfg.name!r}: nothing was read or written:\n  - " + "\n  - ".join(problems)
        )
