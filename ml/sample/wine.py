"""The demo data: scikit-learn's wine data set as CSV matching `ml/contract.yaml`.

The demo plays a customer who sends one file a month; `write_monthly_drops` cuts the 178 wines
into such files. Loaded by path (it is not part of a package), so it imports only libraries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["TARGET", "wine_frame", "write_monthly_drops"]

TARGET = "cultivar"
_INT_COLUMNS = ("magnesium", "proline")


def wine_frame() -> pd.DataFrame:
    """The 178 wines: 13 features named as scikit-learn names them (CSV-safe) and `cultivar`."""
    from sklearn.datasets import load_wine  # deferred: importing scikit-learn takes a second

    bunch = load_wine(as_frame=True)
    frame = bunch.data.rename(columns=lambda name: name.replace("/", "_"))
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype(int)
    frame[TARGET] = [str(bunch.target_names[i]) for i in bunch.target]
    return frame


def write_monthly_drops(folder: Path, months: int = 4, seed: int = 0) -> list[Path]:
    """Shuffle the wines with `seed` and write them as `months` files: 2026-01.csv, 2026-02.csv, ..."""
    wines = wine_frame()
    if not 1 <= months <= len(wines):
        raise ValueError(f"months={months} must be between 1 and {len(wines)}.")
    shuffled = wines.iloc[np.random.default_rng(seed).permutation(len(wines))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(shuffled)), months)):
        path = folder / f"{2026 + i // 12}-{i % 12 + 1:02d}.csv"
        shuffled.iloc[part].to_csv(path, index=False)
        paths.append(path)
    return paths
