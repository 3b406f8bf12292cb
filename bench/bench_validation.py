"""How long the validation gate takes: record level on MIT-BIH, beat level on a ~100k-beat dataset.

    python bench/bench_validation.py [--mitdb ../shared/data/mitdb] [--dataset DIR]

Without --dataset a synthetic 97,568-beat dataset (the reference count) is built in a temp folder.
Results are appended to bench/validation.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synthetic_dataset(out: Path, n: int = 97_568) -> Path:
    from sibeatgan.config import BEATGAN_RECORDS
    from sibeatgan.data import artifact

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 320)).astype(np.float32)
    x = 2 * (x - x.min(-1, keepdims=True)) / (x.max(-1, keepdims=True) - x.min(-1, keepdims=True)) - 1
    labels = rng.choice(5, n, p=[0.889, 0.031, 0.072, 0.0078, 0.0002]).astype(np.int8)
    records = np.asarray(BEATGAN_RECORDS)[rng.integers(0, len(BEATGAN_RECORDS), n)]
    ds = artifact.BeatDataset(artifact.quantize(x), labels, np.zeros(n, np.uint8), records,
                              rng.integers(0, 650_000, n), np.zeros(n, np.int8))
    artifact.save(ds, out, {"records": list(BEATGAN_RECORDS)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mitdb", type=Path, default=HERE.parents[1] / "shared" / "data" / "mitdb")
    parser.add_argument("--dataset", type=Path, default=None)
    args = parser.parse_args()

    t = time.perf_counter()
    import great_expectations  # noqa: F401  (timed apart: a one-off cost per process)
    gx_import = time.perf_counter() - t

    from sibeatgan.config import ValidateConfig
    from sibeatgan.data.artifact import read_manifest
    from sibeatgan.data.validation import run_validate
    from sibeatgan.errors import ValidationFailed

    def timed(raw: Path | None, dataset: Path | None, out: Path) -> tuple[float, str]:
        t = time.perf_counter()
        try:
            summary = run_validate(ValidateConfig(records=("all",)), raw, dataset, out)["summary"]
        except ValidationFailed as err:
            summary = err.summary
        return time.perf_counter() - t, summary.splitlines()[0]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rec_s, rec_summary = timed(args.mitdb, None, tmp / "rec")
        dataset = args.dataset or synthetic_dataset(tmp / "ds")
        n_beats = read_manifest(dataset)["n_beats"]
        beat_s, beat_summary = timed(None, dataset, tmp / "beats")

    lines = [
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        f"command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- great_expectations import: {gx_import:.2f} s (once per process, not counted below)",
        f"- record level, all records of {args.mitdb.name}: {rec_s:.2f} s ({rec_summary})",
        f"- beat level, {n_beats:,} beats ({'synthetic' if args.dataset is None else args.dataset}): "
        f"{beat_s:.2f} s, load and content hash included ({beat_summary})",
        "",
    ]
    print("\n".join(lines))
    with open(HERE / "validation.md", "a") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
