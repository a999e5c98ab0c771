"""Reading a path-based Delta table's log without Spark: live files, partition row counts, small reads.

For schedulers (Airflow sensors and checks) that must not start a JVM: the log is replayed from the last
checkpoint (Parquet, read with pyarrow) and the JSON commits after it. Row counts come from the ``numRecords``
file statistics Delta writes with every file (batchscore's outputs always collect them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.errors import TableLocationError


@dataclass(frozen=True)
class LiveFile:
    path: str
    partition_values: dict[str, str | None]
    num_records: int | None


def _local(path: str) -> Path:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(path)
    if parsed.scheme not in ("", "file"):
        raise TableLocationError(f"expected a local Delta table path, found {path!r}")
    return Path(unquote(parsed.path))


def _checkpoint_actions(log: Path) -> tuple[int, list[dict[str, Any]]]:
    marker = log / "_last_checkpoint"
    if not marker.is_file():
        return -1, []
    import pyarrow.parquet as pq

    version = int(json.loads(marker.read_text())["version"])
    actions: list[dict[str, Any]] = []
    for part in sorted(log.glob(f"{version:020d}.checkpoint*.parquet")):
        table = pq.read_table(part, columns=["add", "remove"])
        for row in table.to_pylist():
            if row.get("add"):
                actions.append({"add": row["add"]})
            elif row.get("remove"):
                actions.append({"remove": row["remove"]})
    return version, actions


def live_files(table_path: str) -> list[LiveFile]:
    """The table's current data files (add actions not removed since)."""
    root = _local(table_path)
    log = root / "_delta_log"
    if not log.is_dir():
        raise TableLocationError(f"expected a Delta table at {root}, found no _delta_log")
    version, actions = _checkpoint_actions(log)
    for commit in sorted(log.glob("*.json")):
        if int(commit.stem) > version:
            actions += [json.loads(line) for line in commit.read_text().splitlines() if line.strip()]
    files: dict[str, LiveFile] = {}
    for action in actions:
        if action.get("add"):
            add = action["add"]
            stats = json.loads(add["stats"]) if add.get("stats") else {}
            pv = add.get("partitionValues") or {}
            values = dict(pv) if isinstance(pv, dict) else dict(pv or [])
            files[add["path"]] = LiveFile(add["path"], values, stats.get("numRecords"))
        elif action.get("remove"):
            files.pop(action["remove"]["path"], None)
    return list(files.values())


def partition_files(table_path: str, column: str, value: str) -> list[LiveFile]:
    return [f for f in live_files(table_path) if f.partition_values.get(column) == value]


def partition_rows(table_path: str, column: str, value: str) -> int:
    """Rows in one partition, from file statistics (no data is read)."""
    files = partition_files(table_path, column, value)
    missing = [f.path for f in files if f.num_records is None]
    if missing:
        raise TableLocationError(f"{table_path}: files without numRecords statistics, e.g. {missing[0]}")
    return sum(f.num_records or 0 for f in files)


def read_rows(table_path: str) -> list[dict[str, Any]]:
    """Every row of a small table (e.g. the comparison table), partition values included."""
    import pyarrow.parquet as pq

    root = _local(table_path)
    rows: list[dict[str, Any]] = []
    for live in live_files(table_path):
        from urllib.parse import unquote

        for row in pq.read_table(root / unquote(live.path)).to_pylist():
            rows.append({**live.partition_values, **row})
    return rows
