"""Reading a path-based Delta table's log without Spark: its latest snapshot's protocol, metadata and files.

Two users: schedulers (Airflow sensors and checks) that must not start a JVM, and the scoring job's file
scan, which lists a partition's files here in milliseconds instead of planning a Spark scan. The log is
replayed from the newest complete classic checkpoint (one Parquet file or all parts of a multi-part one, read
with pyarrow) and the JSON commits after it, which must be contiguous. Anything this reader does not know
how to replay exactly (a V2 checkpoint, a gap in the commits, a missing first
commit) raises :class:`UnsupportedLogError`, and callers fall back to Spark. Row counts come from the
``numRecords`` file statistics Delta writes with every file (batchscore's outputs always collect them).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from batchscore.jobs.errors import TableLocationError

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CLASSIC_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(?:\.(\d{10})\.(\d{10}))?\.parquet$")
_NUM_RECORDS = re.compile(r'"numRecords"\s*:\s*(\d+)')
_V2_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint\.[0-9a-fA-F-]{36}\.(?:json|parquet)$")


class UnsupportedLogError(Exception):
    """The log needs something this reader does not replay (callers fall back to Spark)."""


@dataclass(frozen=True)
class LiveFile:
    path: str  # as in the log: relative to the table (URI-encoded) or an absolute URI
    partition_values: dict[str, str | None]
    num_records: int | None
    size: int = 0
    deletion_vector: bool = False


@dataclass(frozen=True)
class Snapshot:
    """A table's state at ``version``: protocol, metadata and live data files."""

    root: Path
    version: int
    min_reader_version: int
    reader_features: tuple[str, ...]
    writer_features: tuple[str, ...]
    partition_columns: tuple[str, ...]
    configuration: dict[str, str]
    schema: dict[str, Any]
    files: tuple[LiveFile, ...] = field(repr=False)

    def column_type(self, name: str) -> Any:
        """The Delta type of top-level column ``name`` (``"string"``, ``"date"``, a dict for nested)."""
        for column in self.schema.get("fields", []):
            if column["name"] == name:
                return column["type"]
        raise KeyError(name)

    def uri(self, live: LiveFile) -> str:
        """The absolute URI of a data file (``file:///…``; paths in the log are already URI-encoded)."""
        if urlparse(live.path).scheme:
            return live.path
        return f"{self.root.as_uri()}/{live.path}"


def _local(path: str) -> Path:
    parsed = urlparse(path)
    if parsed.scheme not in ("", "file"):
        raise TableLocationError(f"expected a local Delta table path, found {path!r}")
    return Path(unquote(parsed.path)).absolute()


def _checkpoint(names: list[str], latest: int) -> tuple[int, list[str]]:
    """The newest complete classic checkpoint at or below ``latest``: ``(version, part names)``, or
    ``(-1, [])`` when there is none. A newer V2 checkpoint (UUID-named, with sidecars) is unsupported."""
    parts: dict[int, dict[int, set[str]]] = {}  # version -> part count -> names
    v2 = [int(m.group(1)) for n in names if (m := _V2_CHECKPOINT.match(n))]
    for name in names:
        match = _CLASSIC_CHECKPOINT.match(name)
        if match:
            total = int(match.group(3) or 1)
            parts.setdefault(int(match.group(1)), {}).setdefault(total, set()).add(name)
    complete = [
        (version, sorted(found))
        for version, by_total in parts.items()
        for total, found in by_total.items()
        if len(found) == total and version <= latest
    ]
    version, chosen = max(complete, default=(-1, []))
    if any(version < v <= latest for v in v2):
        raise UnsupportedLogError("the newest checkpoint is a V2 checkpoint")
    return version, chosen


def _checkpoint_actions(log: Path, part_names: list[str]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    actions: list[dict[str, Any]] = []
    for name in part_names:
        parquet = pq.ParquetFile(log / name)
        names = parquet.schema_arrow.names
        # A V2 checkpoint may carry a classic name: its file actions then live in sidecar files.
        v2 = [c for c in ("sidecar", "checkpointMetadata") if c in names]
        if v2 and any(parquet.read(columns=v2).column(c).null_count < parquet.metadata.num_rows for c in v2):
            raise UnsupportedLogError(f"checkpoint {name} is a V2 checkpoint (sidecar files)")
        columns = [c for c in ("add", "remove", "protocol", "metaData") if c in names]
        for row in parquet.read(columns=columns).to_pylist():
            actions += [{kind: action} for kind, action in row.items() if action is not None]
    return actions


def _string_map(raw: Any) -> dict[str, Any]:
    """A Delta string map (partition values, table configuration): JSON commits hold a dict, pyarrow reads
    a checkpoint's map column as a list of (key, value) pairs."""
    return dict(raw) if isinstance(raw, dict) else dict(raw or [])


def read_snapshot(table_path: str) -> Snapshot:
    """The latest snapshot of the local Delta table at ``table_path``."""
    root = _local(table_path)
    log = root / "_delta_log"
    if not log.is_dir():
        raise TableLocationError(f"expected a Delta table at {root}, found no _delta_log")
    names = [entry.name for entry in os.scandir(log)]
    commits = sorted(int(m.group(1)) for n in names if (m := _COMMIT.match(n)))
    if not commits:
        raise TableLocationError(f"expected a Delta table at {root}, found no commits in _delta_log")
    latest = commits[-1]
    version, part_names = _checkpoint(names, latest)
    needed = list(range(version + 1, latest + 1))
    present = set(commits)
    missing = [v for v in needed if v not in present]
    if missing:
        raise UnsupportedLogError(f"commit {missing[0]} is missing after checkpoint {version}")
    actions = _checkpoint_actions(log, part_names)
    for commit in needed:
        text = (log / f"{commit:020d}.json").read_text()
        actions += [json.loads(line) for line in text.splitlines() if line.strip()]
    protocol: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    files: dict[tuple[str, str | None], LiveFile] = {}
    for action in actions:
        if action.get("add"):
            add = action["add"]
            records = _NUM_RECORDS.search(add.get("stats") or "")  # not a full parse: stats can be large
            dv = add.get("deletionVector")
            files[(add["path"], _dv_id(dv))] = LiveFile(
                add["path"],
                _string_map(add.get("partitionValues")),
                int(records.group(1)) if records else None,
                int(add.get("size") or 0),
                dv is not None,
            )
        elif action.get("remove"):
            remove = action["remove"]
            files.pop((remove["path"], _dv_id(remove.get("deletionVector"))), None)
        elif action.get("protocol"):
            protocol = action["protocol"]
        elif action.get("metaData"):
            metadata = action["metaData"]
    if not protocol or not metadata:
        raise UnsupportedLogError(f"no protocol or metadata action up to version {latest}")
    return Snapshot(
        root=root,
        version=latest,
        min_reader_version=int(protocol.get("minReaderVersion") or 1),
        reader_features=tuple(protocol.get("readerFeatures") or ()),
        writer_features=tuple(protocol.get("writerFeatures") or ()),
        partition_columns=tuple(metadata.get("partitionColumns") or ()),
        configuration=_string_map(metadata.get("configuration")),
        schema=json.loads(metadata.get("schemaString") or "{}"),
        files=tuple(files.values()),
    )


def _dv_id(dv: dict[str, Any] | None) -> str | None:
    """A deletion vector's identity (an add and the remove that retires it name the same one)."""
    if not dv:
        return None
    return f"{dv.get('storageType')}{dv.get('pathOrInlineDv')}@{dv.get('offset')}"


def live_files(table_path: str) -> list[LiveFile]:
    """The table's current data files (add actions not removed since)."""
    return list(read_snapshot(table_path).files)


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
        for row in pq.read_table(root / unquote(live.path)).to_pylist():
            rows.append({**live.partition_values, **row})
    return rows
