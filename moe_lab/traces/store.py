"""A trace as one parquet file: a row per (MoE layer, token), what the trace says about it in the file's
metadata. Any parquet reader (pandas, polars, DuckDB) opens it; `read_trace` gives the `Trace` back.

Columns: layer int16, position int32 (the token's index in the traced list), token_id int32,
experts list<int16> and gates list<float32> (each row K long, padded as in `Trace`). Rows are sorted
by layer, then position. The metadata key `moe_lab.trace` holds TraceMeta as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from moe_lab.artifacts.atomic import atomic_file
from moe_lab.errors import first_line
from moe_lab.traces.trace import NO_EXPERT, Trace, TraceError, TraceMeta

METADATA_KEY = b"moe_lab.trace"
FORMAT_VERSION = 1  # raised when the columns or the metadata change meaning
TRACE_SUFFIX = ".parquet"


def trace_table(trace: Trace) -> pa.Table:
    L, T, K = trace.experts.shape
    offsets = pa.array(np.arange(0, L * T * K + 1, K, dtype=np.int32))
    table = pa.table(
        {
            "layer": pa.array(np.repeat(np.asarray(trace.layers, dtype=np.int16), T)),
            "position": pa.array(np.tile(np.arange(T, dtype=np.int32), L)),
            "token_id": pa.array(np.tile(trace.token_ids.astype(np.int32), L)),
            "experts": pa.ListArray.from_arrays(offsets, pa.array(trace.experts.reshape(-1).astype(np.int16))),
            "gates": pa.ListArray.from_arrays(offsets, pa.array(trace.gates.reshape(-1).astype(np.float32))),
        }
    )
    meta = {"format_version": FORMAT_VERSION, **asdict(trace.meta)}
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})


def write_trace(trace: Trace, path: Path) -> None:
    """Write atomically: a reader never sees half a trace."""
    with atomic_file(Path(path), "wb") as f:
        pq.write_table(trace_table(trace), f, compression="zstd")


def read_trace(path: Path) -> Trace:
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise TraceError(f"{path}: not a readable parquet file: {first_line(err)}") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise TraceError(f"{path}: no '{METADATA_KEY.decode()}' metadata; not a routing trace")
    meta = json.loads(raw)
    if meta.pop("format_version", None) != FORMAT_VERSION:
        raise TraceError(f"{path}: trace format is not version {FORMAT_VERSION}; written by another moe_lab")
    layer = table.column("layer").to_numpy().astype(np.int64)
    position = table.column("position").to_numpy().astype(np.int64)
    layers = sorted(set(layer.tolist()))
    n_tokens = int(position.max()) + 1 if len(position) else 0
    if len(table) != len(layers) * n_tokens:
        raise TraceError(f"{path}: {len(table)} rows are not one per token ({n_tokens}) of each of {layers}")
    row = np.searchsorted(layers, layer) * n_tokens + position  # where each stored row belongs
    experts, gates = padded_lists(table.column("experts"), NO_EXPERT), padded_lists(table.column("gates"), 0.0)
    token_ids = np.empty(n_tokens, dtype=np.int64)
    token_ids[position] = table.column("token_id").to_numpy()
    known = {f.name for f in fields(TraceMeta)}
    return Trace(
        layers=layers,
        token_ids=token_ids,
        experts=_in_order(experts.astype(np.int16), row, len(layers), n_tokens),
        gates=_in_order(gates.astype(np.float32), row, len(layers), n_tokens),
        meta=TraceMeta(**{k: v for k, v in meta.items() if k in known}),
    )


def padded_lists(column: pa.ChunkedArray, fill) -> np.ndarray:
    """A list column as a [rows, widest] array, shorter lists padded with `fill`."""
    lists = column.combine_chunks()
    lengths = lists.value_lengths().to_numpy(zero_copy_only=False)
    values = lists.flatten().to_numpy(zero_copy_only=False)
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), width), fill, dtype=values.dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = values
    return out


def _in_order(rows_K: np.ndarray, row: np.ndarray, n_layers: int, n_tokens: int) -> np.ndarray:
    out = np.empty((n_layers * n_tokens, rows_K.shape[1]), dtype=rows_K.dtype)
    out[row] = rows_K
    return out.reshape(n_layers, n_tokens, -1)
