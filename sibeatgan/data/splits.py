"""Train/validation/test splits: BeatGAN's five folds and de Chazal's inter-patient DS1/DS2.

Anomalous beats never enter training. Every split is a deterministic function of the dataset, the
fold and the split seed, and is decided once: `build_splits` computes every fold of both protocols,
`save_split` writes them as an artifact (split.json + split.npz, with a content hash), and training,
search and evaluation read that artifact, so a training seed never moves a beat between splits.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.config import DS1_RECORDS, DS2_RECORDS
from sibeatgan.data.artifact import BeatDataset
from sibeatgan.errors import DatasetError
from sibeatgan.files import atomic_open, write_json

SPLIT_FORMAT = "sibeatgan-split"
SPLIT_VERSION = 1
PARTS = ("train", "val", "test")


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


@dataclass(frozen=True)
class SplitSet:
    """Every split of one dataset: BeatGAN folds 0..k-1 and, when the dataset has DS1 and DS2, the inter-patient one."""

    dataset_hash: str
    split_seed: int
    val_fraction: float
    splits: dict[tuple[str, int], Split] = field(repr=False)

    @property
    def hash(self) -> str:
        """Content hash over the dataset hash, the seed, the fraction and every index array."""
        h = hashlib.sha256(f"{self.dataset_hash}|{self.split_seed}|{self.val_fraction!r}".encode())
        for (protocol, fold), split in sorted(self.splits.items()):
            for part in PARTS:
                a = np.ascontiguousarray(getattr(split, part), dtype=np.int64)
                h.update(f"{protocol}/{fold}/{part}/{a.shape[0]}".encode())
                h.update(a.tobytes())
        return h.hexdigest()

    def protocols(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for protocol, fold in sorted(self.splits):
            out.setdefault(protocol, []).append(fold)
        return out

    def fold(self, protocol: str, fold: int = 0) -> Split:
        """The split of `protocol` ('beatgan' or 'interpatient') and `fold` (0 for inter-patient)."""
        key = (protocol, 0 if protocol == "interpatient" else int(fold))
        if key not in self.splits:
            have = ", ".join(f"{p} folds {f}" for p, f in self.protocols().items()) or "nothing"
            raise DatasetError(f"the split artifact has no {protocol!r} split for fold {fold} (it has {have})")
        return self.splits[key]


def build_splits(ds: BeatDataset, split_seed: int = 0, val_fraction: float = 0.1) -> SplitSet:
    """Every fold of the BeatGAN protocol, and the inter-patient split where the dataset has DS1 and DS2 records."""
    if not 0 < val_fraction < 1:
        raise DatasetError(f"val_fraction must be in (0, 1), got {val_fraction}")
    splits: dict[tuple[str, int], Split] = {}
    n_folds = int(ds.folds.max()) + 1 if ds.folds.size else 0
    for fold in range(n_folds):
        splits[("beatgan", fold)] = beatgan_split(ds, fold, val_fraction, split_seed)
    rec = ds.records.astype(str)
    if np.isin(rec, DS1_RECORDS).any() and np.isin(rec, DS2_RECORDS).any():
        splits[("interpatient", 0)] = interpatient_split(ds, val_fraction, split_seed)
    if not splits:
        raise DatasetError("the dataset has no folds and no DS1/DS2 records: no split can be built")
    return SplitSet(ds.content_hash(), int(split_seed), float(val_fraction), splits)


def save_split(split_set: SplitSet, out: str | Path) -> dict[str, Any]:
    """Write split.npz (index arrays) then split.json (what, counts, hash) into `out`, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {f"{p}/{f}/{part}": getattr(s, part).astype(np.int64) for (p, f), s in split_set.splits.items() for part in PARTS}
    with atomic_open(out / "split.npz") as fh:
        np.savez_compressed(fh, **arrays)
    info = {
        "format": SPLIT_FORMAT,
        "version": SPLIT_VERSION,
        "hash": split_set.hash,
        "dataset_hash": split_set.dataset_hash,
        "split_seed": split_set.split_seed,
        "val_fraction": split_set.val_fraction,
        "splits": {f"{p}/{f}": {part: int(getattr(s, part).shape[0]) for part in PARTS} for (p, f), s in sorted(split_set.splits.items())},
    }
    write_json(out / "split.json", info)
    return info


def load_split(path: str | Path, dataset_hash: str | None = None) -> SplitSet:
    """Read a split artifact, verify its hash, and (given `dataset_hash`) that it was made for that dataset."""
    root = Path(path)
    jpath, npath = root / "split.json", root / "split.npz"
    for p in (jpath, npath):
        if not p.is_file():
            raise DatasetError(f"{p} is missing: is {root} a split written by `sibeatgan split` (or `preprocess`)?")
    try:
        info = json.loads(jpath.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{jpath} is not valid JSON: {err}") from None
    if info.get("format") != SPLIT_FORMAT or info.get("version") != SPLIT_VERSION:
        raise DatasetError(f"{jpath}: format {info.get('format')!r} version {info.get('version')!r}, expected {SPLIT_FORMAT!r} {SPLIT_VERSION}")
    try:
        with np.load(npath, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:  # zipfile/zlib/ValueError: a truncated or corrupted file
        raise DatasetError(f"{npath} cannot be read ({type(err).__name__}: {err})") from None
    splits: dict[tuple[str, int], Split] = {}
    for key in info.get("splits", {}):
        protocol, fold = key.split("/")
        try:
            parts = [arrays[f"{key}/{part}"] for part in PARTS]
        except KeyError as err:
            raise DatasetError(f"{npath}: missing array {err.args[0]}") from None
        splits[(protocol, int(fold))] = Split(protocol, *parts)
    split_set = SplitSet(info["dataset_hash"], int(info["split_seed"]), float(info["val_fraction"]), splits)
    if split_set.hash != info.get("hash"):
        raise DatasetError(f"{npath}: content hash does not match {jpath}; the split is corrupted or was edited")
    if dataset_hash is not None and split_set.dataset_hash != dataset_hash:
        raise DatasetError(f"{root}: split made for dataset {split_set.dataset_hash[:12]}, not for this one ({dataset_hash[:12]})")
    return split_set


def default_split_dir(dataset: str | Path) -> Path:
    """Where `preprocess` writes the dataset's split and where steps look when no split is given."""
    return Path(dataset) / "split"


def resolve_split(dataset: str | Path, split: str | Path | None, dataset_hash: str) -> SplitSet:
    """The split artifact given, or the dataset's own; a clear error when there is none."""
    path = Path(split) if split is not None else default_split_dir(dataset)
    if split is None and not (path / "split.json").is_file():
        raise DatasetError(f"{dataset} has no split artifact ({path}); write one with `sibeatgan split --dataset {dataset}`")
    return load_split(path, dataset_hash)


def run_split(config: Any, dataset: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """`sibeatgan split`: build every split of `dataset` with `config.split_seed` / `config.val_fraction` into `out`."""
    from sibeatgan.data.artifact import load

    ds = load(dataset)
    split_set = build_splits(ds, config.split_seed, config.val_fraction)
    target = Path(out) if out is not None else default_split_dir(dataset)
    if (target / "split.json").is_file():
        old = json.loads((target / "split.json").read_text()).get("hash")
        if old != split_set.hash:
            raise DatasetError(f"{target} already holds split {str(old)[:12]}; models trained on it would no longer evaluate. "
                               f"Write this one (split seed {config.split_seed}) elsewhere with --out")
    info = save_split(split_set, target)
    return {"split": str(target), **info}
