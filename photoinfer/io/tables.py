"""Plain per-star result tables (Parquet or CSV), written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["write_table", "read_table"]


def write_table(columns: dict, path: str | os.PathLike) -> Path:
    """Write named 1-D columns to ``path`` (.parquet or .csv), via a temporary file and a rename."""
    import pyarrow as pa
    path = Path(path)
    table = pa.table({k: np.asarray(v) for k, v in columns.items()})
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        pq.write_table(table, tmp)
    elif path.suffix == ".csv":
        import pyarrow.csv as pcsv
        pcsv.write_csv(table, tmp)
    else:
        raise ValueError(f"{path}: results are written as .parquet or .csv")
    os.replace(tmp, path)
    return path


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_table` into numpy columns."""
    import pyarrow.parquet as pq
    import pyarrow.csv as pcsv
    path = Path(path)
    t = pq.read_table(path) if path.suffix == ".parquet" else pcsv.read_csv(path)
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
