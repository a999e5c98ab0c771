"""Scoring straight from Parquet files: each task reads its own files with pyarrow.

When the input is a plain Delta/Parquet table, moving every feature column from the JVM to Python costs more
than scoring. Here a task receives only file paths, reads the columns it needs with pyarrow (projection
pushed into the Parquet reader), scores them with the same :class:`~udfs.runtime.ScoringLoop`, and hands only
pass-through columns and predictions back to Spark.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa

from batchscore.udfs.scorer import ArrowScorer, make_arrow_scorer
from batchscore.udfs.spec import ModelRef, ScoringPlan

GROUP_COLUMN = "id"  # the task's file group, as spark.range numbers it


def open_parquet(uri: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` for a Spark file URI (``file:/…``, ``s3a://…``, plain path)."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return pq.ParquetFile(unquote(parsed.path), memory_map=True)
    scheme = {"s3a": "s3", "s3n": "s3"}.get(parsed.scheme, parsed.scheme)
    filesystem, path = pafs.FileSystem.from_uri(uri.replace(f"{parsed.scheme}://", f"{scheme}://", 1))
    return pq.ParquetFile(filesystem.open_input_file(path))


# A row group of flat columns (numbers, strings) whose needed columns decode to at most this many bytes is
# read in one call and then sliced: cheaper than batch by batch for narrow rows, where pyarrow's per-batch
# cost shows. Larger row groups, and nested columns (arrays: wide rows, whose whole-group read also
# materialises their repetition levels) are read batch by batch, so a worker's memory stays bounded.
WHOLE_ROW_GROUP_BYTES = 96 << 20


def _read_whole(row_group: Any, columns: list[str]) -> bool:
    chunks = [row_group.column(i) for i in range(row_group.num_columns)]
    needed = [c for c in chunks if c.path_in_schema in columns]  # a nested column's leaves are "a.list.x"
    prefixes = tuple(f"{name}." for name in columns)
    nested = any(c.path_in_schema.startswith(prefixes) for c in chunks)
    return not nested and sum(c.total_uncompressed_size for c in needed) <= WHOLE_ROW_GROUP_BYTES


def read_files(paths: Iterator[str], columns: list[str], rows_per_batch: int) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` from each file, in file order."""
    for path in paths:
        parquet = open_parquet(path)
        metadata = parquet.metadata
        for index in range(metadata.num_row_groups):
            if _read_whole(metadata.row_group(index), columns):
                table = parquet.read_row_group(index, columns=columns, use_threads=False)
                yield from table.combine_chunks().to_batches(max_chunksize=rows_per_batch)
            else:
                yield from parquet.iter_batches(
                    batch_size=rows_per_batch, row_groups=[index], columns=columns, use_threads=False
                )


def make_file_scorer(
    ref: ModelRef,
    plan: ScoringPlan,
    file_columns: list[str],
    file_groups: list[list[str]],
) -> ArrowScorer:
    """A ``mapInArrow`` function over ``spark.range(len(file_groups))`` that reads and scores, in each task,
    the files of the group numbers it is given."""
    score = make_arrow_scorer(ref, plan)

    def score_files(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        groups = itertools.chain.from_iterable(b.column(GROUP_COLUMN).to_pylist() for b in batches)
        paths = itertools.chain.from_iterable(file_groups[g] for g in groups)
        yield from score(read_files(paths, file_columns, plan.rows_per_arrow_batch))

    return score_files
