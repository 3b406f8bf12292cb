"""The beat dataset artifact (save/load/hash, corruption) and the two split protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sibeatgan.config import DS1_RECORDS, DS2_RECORDS
from sibeatgan.data import artifact
from sibeatgan.data.splits import assign_folds, beatgan_split, interpatient_split, make_split
from sibeatgan.errors import DatasetError
from tests import conftest


def make_dataset(n: int = 2000, seed: int = 0) -> artifact.BeatDataset:
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.8, 0.06, 0.08, 0.04, 0.02]).astype(np.uint8)
    x = rng.uniform(-1, 1, size=(n, 1, 320)).astype(np.float32)
    records = rng.choice(np.array(DS1_RECORDS + DS2_RECORDS), size=n)
    return conftest.make_dataset(labels, x, records=records, symbols=np.full(n, ord("N")), seed=seed,
                                 meta={"config": {"seed": seed}})


def test_save_load_round_trip(tmp_path):
    ds = make_dataset()
    manifest = artifact.save(ds, tmp_path / "d")
    assert manifest["counts"] == ds.counts() and sum(manifest["counts"].values()) == len(ds)
    back = artifact.load(tmp_path / "d")
    assert back.content_hash() == ds.content_hash() == manifest["content_hash"]
    np.testing.assert_array_equal(back.beats, ds.beats)
    assert back.meta["config"] == {"seed": 0}
    fb = back.float_beats()
    assert fb.dtype == np.float32 and fb.min() >= -1 and fb.max() <= 1
    assert np.abs(fb - ds.beats / artifact.SCALE).max() < 1e-6
    assert not list((tmp_path / "d").glob("*.tmp"))


def test_load_refuses_damage(tmp_path):
    ds = make_dataset()
    artifact.save(ds, tmp_path / "d")
    with pytest.raises(DatasetError, match="missing"):
        artifact.load(tmp_path / "nowhere")
    data = (tmp_path / "d" / "beats.npz").read_bytes()
    (tmp_path / "d" / "beats.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="beats.npz cannot be read"):
        artifact.load(tmp_path / "d")
    ds2 = make_dataset(seed=1)
    artifact.save(ds2, tmp_path / "e")
    # An edited array no longer matches the manifest's content hash.
    arrays = dict(np.load(tmp_path / "e" / "beats.npz"))
    arrays["labels"][0] = 4 - arrays["labels"][0]
    np.savez_compressed(tmp_path / "e" / "beats.npz", **arrays)
    with pytest.raises(DatasetError, match="content hash"):
        artifact.load(tmp_path / "e")


def test_folds_partition_normals():
    ds = make_dataset()
    normals = ds.labels == 0
    assert (ds.folds[~normals] == -1).all()
    sizes = np.bincount(ds.folds[normals])
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(assign_folds(ds.labels, 5, 0), ds.folds)
    assert not np.array_equal(assign_folds(ds.labels, 5, 1), ds.folds)


@pytest.mark.parametrize("fold", range(5))
def test_beatgan_split(fold):
    ds = make_dataset()
    s = beatgan_split(ds, fold, val_fraction=0.1, seed=0)
    parts = [s.train, s.val, s.test]
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx) == len(ds)  # disjoint and complete
    assert (ds.labels[s.train] == 0).all()
    assert (ds.folds[s.train] != fold).all()
    assert set(np.flatnonzero(ds.folds == fold)) <= set(s.test)
    for c in range(1, 5):
        n_c = (ds.labels == c).sum()
        assert (ds.labels[s.val] == c).sum() == math.ceil(0.1 * n_c)  # as sklearn's train_test_split(test_size=0.1)
    s2 = beatgan_split(ds, fold, val_fraction=0.1, seed=0)
    np.testing.assert_array_equal(s.val, s2.val)
    # The anomalies' val/test split is the same in every fold, as in the reference; the normals' differs.
    other = beatgan_split(ds, (fold + 1) % 5, val_fraction=0.1, seed=0)
    anomalous = ds.labels != 0
    np.testing.assert_array_equal(s.test[anomalous[s.test]], other.test[anomalous[other.test]])
    assert not np.array_equal(s.test[~anomalous[s.test]], other.test[~anomalous[other.test]])


def test_interpatient_split_keeps_patients_apart():
    ds = make_dataset()
    s = make_split(ds, "interpatient")
    rec = ds.records.astype(str)
    assert set(rec[s.train]) <= set(DS1_RECORDS) and set(rec[s.val]) <= set(DS1_RECORDS)
    assert set(rec[s.test]) <= set(DS2_RECORDS)
    assert (ds.labels[s.train] == 0).all()
    assert len(s.test) == np.isin(rec, DS2_RECORDS).sum()


def test_split_errors():
    ds = make_dataset()
    with pytest.raises(DatasetError, match="fold 7 does not exist"):
        beatgan_split(ds, 7)
    with pytest.raises(DatasetError, match="unknown split protocol"):
        make_split(ds, "random")
    only_ds1 = make_dataset()
    only_ds1.records[:] = int(DS1_RECORDS[0])
    with pytest.raises(DatasetError, match="DS1 and DS2"):
        interpatient_split(only_ds1)
