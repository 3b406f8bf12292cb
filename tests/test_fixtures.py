"""The test helpers themselves: a hand-made dataset must look like one preprocess writes."""

from __future__ import annotations

import numpy as np

from sibeatgan.data import artifact
from tests.conftest import DTYPES, make_dataset, save_dataset


def test_make_dataset_has_the_dtypes_preprocess_writes(synth_dataset, tmp_path):
    real = artifact.load(synth_dataset)
    assert {name: str(getattr(real, name).dtype) for name in artifact.ARRAYS} == DTYPES
    made = make_dataset([0, 0, 1, 2, 3, 4, 0], records=("100", "101"))
    assert {name: str(getattr(made, name).dtype) for name in artifact.ARRAYS} == DTYPES
    assert list(made.records) == ["100", "101", "100", "101", "100", "101", "100"]
    assert bytes(made.symbols).decode() == "NNSVFQN" and set(made.folds[made.labels != 0]) == {-1}
    back = artifact.load(save_dataset(made, tmp_path / "d", records=["100", "101"]))
    assert back.content_hash() == made.content_hash() and back.meta["records"] == ["100", "101"]
    assert np.abs(back.float_beats()).max() <= 1.0
