"""CSV and Parquet tables as feature and label arrays (pandas, pyarrow).

A table has one row per sample: a label column (integer class ids) and numeric feature
columns. ``feature_columns`` empty means every column but the label, in the table's
order; otherwise exactly those, in that order (so every client feeds the model the same
features even if their files order columns differently).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_kubeflow import defaults
from fl_kubeflow.training.sources import DatasetError

TABLE_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class TableColumns:
    """Which columns of a table are the label and the features."""

    label: str = defaults.LABEL_COLUMN
    features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, label: str, features: str | Sequence[str]) -> TableColumns:
        """From option values: ``features`` is a comma-separated string or a list."""
        names = features.split(",") if isinstance(features, str) else list(features)
        label = label.strip()
        if not label:
            raise ValueError("label_column must name a column")
        return cls(label, tuple(name.strip() for name in names if name.strip()))


def read_table(
    payload: bytes, table_format: str, columns: TableColumns, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(features float32 (n, f), raw labels (n,))`` of a CSV or Parquet file's bytes.

    Raises:
        DatasetError: naming ``where`` and the problem: unreadable, no label column,
            missing feature columns, non-numeric or missing feature values, no rows.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise DatasetError(
            f"{where}: tables need pandas and pyarrow: pip install 'fl-kubeflow[train]'"
        ) from exc
    try:
        if table_format == "csv":
            frame = pd.read_csv(io.BytesIO(payload))
        else:
            frame = pd.read_parquet(io.BytesIO(payload))
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        raise DatasetError(f"{where} is not a readable {table_format} table: {exc}") from exc
    present = [str(name) for name in frame.columns]
    frame.columns = present
    if columns.label not in present:
        raise DatasetError(
            f"{where} has no label column {columns.label!r}; its columns are {present[:20]} "
            "(set label_column)"
        )
    wanted = list(columns.features) or [name for name in present if name != columns.label]
    missing = [name for name in wanted if name not in present]
    if missing:
        raise DatasetError(f"{where} lacks feature column(s) {missing}; it has {present[:20]}")
    if columns.label in wanted:
        raise DatasetError(f"{where}: label column {columns.label!r} is also a feature column")
    if not wanted:
        raise DatasetError(f"{where} has no feature columns besides {columns.label!r}")
    if frame.empty:
        raise DatasetError(f"{where} has no rows")
    features = frame[wanted]
    non_numeric = {
        name: str(dtype)
        for name, dtype in features.dtypes.items()
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
    }
    if non_numeric:
        shown = dict(list(non_numeric.items())[:10])
        raise DatasetError(
            f"{where}: feature column(s) must be numeric, these are not: {shown} "
            "(encode them, or leave them out with feature_columns)"
        )
    x = features.to_numpy(dtype=np.float32, na_value=np.nan)
    if np.isnan(x).any():
        gaps = [name for name in wanted if features[name].isna().any()][:10]
        raise DatasetError(f"{where}: feature column(s) {gaps} have missing values")
    labels = frame[columns.label]
    if labels.isna().any():
        raise DatasetError(f"{where}: label column {columns.label!r} has missing values")
    return x, labels.to_numpy()
