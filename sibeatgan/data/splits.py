"""Train/validation/test splits: BeatGAN's five folds and de Chazal's inter-patient DS1/DS2.

Anomalous beats never enter training. Every split is a deterministic function
of the dataset, the fold and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from sibeatgan.config import DS1_RECORDS, DS2_RECORDS
from sibeatgan.data.artifact import BeatDataset
from sibeatgan.errors import DatasetError


@dataclass(frozen=True)
class Split:
    """Indexes into a BeatDataset."""

    protocol: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def assign_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index for each normal beat (a seeded permutation cut into equal parts), -1 elsewhere."""
    folds = np.full(labels.shape[0], -1, dtype=np.int8)
    normals = np.flatnonzero(labels == 0)
    perm = np.random.default_rng(seed).permutation(normals)
    for k, part in enumerate(np.array_split(perm, n_folds)):
        folds[part] = k
    return folds


def _take_fraction(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split idx into (a random `fraction` of it, rounded up as sklearn's train_test_split does, the rest), both sorted."""
    perm = rng.permutation(idx)
    k = math.ceil(fraction * idx.shape[0] - 1e-9)
    return np.sort(perm[:k]), np.sort(perm[k:])


def _split_anomalies(ds: BeatDataset, pool: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per anomalous class, a `fraction` for validation and the rest for test."""
    val, test = [], []
    for c in np.unique(ds.labels[pool]):
        if c == 0:
            continue
        v, t = _take_fraction(pool[ds.labels[pool] == c], fraction, rng)
        val.append(v)
        test.append(t)
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(val) if val else empty), (np.concatenate(test) if test else empty)


def beatgan_split(ds: BeatDataset, fold: int, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """BeatGAN protocol: test = normal fold `fold` + 90% of anomalies; val = 10% of the other normals + 10% of anomalies.

    As in the reference, the anomalies' val/test split is the same for every fold (it depends on the seed only),
    so the spread over folds is the spread of the normal folds.
    """
    n_folds = int(ds.folds.max()) + 1 if ds.folds.size else 0
    if not 0 <= fold < n_folds:
        raise DatasetError(f"fold {fold} does not exist: the dataset has folds 0..{n_folds - 1}")
    normals = np.flatnonzero(ds.labels == 0)
    test_n = normals[ds.folds[normals] == fold]
    val_n, train = _take_fraction(normals[ds.folds[normals] != fold], val_fraction, np.random.default_rng([seed, fold]))
    val_a, test_a = _split_anomalies(ds, np.flatnonzero(ds.labels != 0), val_fraction, np.random.default_rng([seed, 1 << 16]))
    return Split("beatgan", train, np.sort(np.concatenate([val_n, val_a])), np.sort(np.concatenate([test_n, test_a])))


def interpatient_split(ds: BeatDataset, val_fraction: float = 0.1, seed: int = 0) -> Split:
    """de Chazal: train on DS1 normals, test on all of DS2; val = a share of DS1 (normals and anomalies)."""
    rec = ds.records.astype(str)
    in_ds1 = np.isin(rec, DS1_RECORDS)
    in_ds2 = np.isin(rec, DS2_RECORDS)
    if not in_ds1.any() or not in_ds2.any():
        raise DatasetError("inter-patient split needs beats from both DS1 and DS2 records; this dataset lacks one")
    rng = np.random.default_rng([seed, 99])
    val_n, train = _take_fraction(np.flatnonzero(in_ds1 & (ds.labels == 0)), val_fraction, rng)
    val_a, _ = _split_anomalies(ds, np.flatnonzero(in_ds1 & (ds.labels != 0)), val_fraction, rng)
    return Split("interpatient", train, np.sort(np.concatenate([val_n, val_a])), np.flatnonzero(in_ds2))


def make_split(ds: BeatDataset, protocol: str, fold: int = 0, val_fraction: float = 0.1, seed: int = 0) -> Split:
    if protocol == "beatgan":
        return beatgan_split(ds, fold, val_fraction, seed)
    if protocol == "interpatient":
        return interpatient_split(ds, val_fraction, seed)
    raise DatasetError(f"unknown split protocol {protocol!r}; use 'beatgan' or 'interpatient'")
