"""How long the data steps take on the full MIT-BIH database: ingest, validate, preprocess, and where preprocess spends.

    python bench/bench_data.py [--mitdb ../shared/data/mitdb] [--repeat 3] [--biosppy]

Ingest copies the 48-record folder (checksums verified), validate checks it at record level,
preprocess reads the 44 BeatGAN records from the copy. Steps whose module is missing are skipped.
--biosppy also times biosppy's own Hamilton segmenter on every record (about 40 s).
Results are appended to bench/data.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REF = dict(bandpass_low_hz=3.0, bandpass_high_hz=45.0, bandpass_order=108)  # the BeatGAN reference filter


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " load average %.2f at start," % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores,{load} Python {platform.python_version()}, numpy {np.__version__}"


def stages(folder: Path, records: tuple[str, ...], with_biosppy: bool) -> dict[str, float]:
    """Single-process seconds per stage of preprocess, summed over records."""
    from sibeatgan.data import artifact, beats, rpeaks
    from sibeatgan.files import sha256_file
    from sibeatgan.data.records import read_record

    t: dict[str, float] = {}

    def add(key: str, since: float) -> float:
        now = time.perf_counter()
        t[key] = t.get(key, 0.0) + now - since
        return now

    for name in records:
        s = time.perf_counter()
        rec = read_record(folder, name)
        s = add("read record (wfdb signal + annotations)", s)
        x = rpeaks.reference_filter(rec.lead("MLII"), rec.fs)
        s = add("reference FIR filter 3-45 Hz (MLII)", s)
        h = rpeaks.hamilton_segmenter(x, rec.fs)
        s = add("Hamilton segmenter (port)", s)
        c = rpeaks.correct_rpeaks(x, h, rec.fs)
        peaks = c[(c - int(0.2 * rec.fs) >= 0) & (c + int(0.4 * rec.fs) <= len(x))]
        s = add("correct_rpeaks + edge drop", s)
        if with_biosppy:
            from biosppy.signals import ecg as becg

            s = time.perf_counter()
            becg.hamilton_segmenter(signal=x, sampling_rate=rec.fs)
            s = add("(biosppy's Hamilton segmenter, for comparison)", s)
        labels = beats.label_symbols(rec.ann_symbols, "beatgan")
        keep = (labels >= 0) & beats.window_fits(rec.ann_samples, rec.n_samples, 140, 180)
        near = beats.nearest_distance(rec.ann_samples[keep], peaks) < 10
        w = beats.minmax_scale(beats.cut_windows(x[:, None], rec.ann_samples[keep][near | (labels[keep] > 0)], 140, 180))
        artifact.quantize(w)
        s = add("label, cut, min-max, quantize", s)
        for ext in ("hea", "dat", "atr"):
            sha256_file(folder / f"{name}.{ext}")
        add("sha256 of input files", s)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mitdb", type=Path, default=HERE.parents[1] / "shared" / "data" / "mitdb")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--biosppy", action="store_true")
    args = parser.parse_args()
    if not args.mitdb.is_dir():
        sys.exit(f"{args.mitdb} not found: give --mitdb")

    from sibeatgan.config import PreprocessConfig
    from sibeatgan.data.preprocess import run_preprocess

    lines = [f"machine: {machine()}", f"command: `{' '.join(['python bench/bench_data.py', *sys.argv[1:]])}`"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    raw = args.mitdb
    try:
        from sibeatgan.config import IngestConfig
        from sibeatgan.data.sources import run_ingest
    except ImportError:
        lines.append("- ingest: skipped (sibeatgan.data.sources.run_ingest not present)")
    else:
        t = time.perf_counter()
        res = run_ingest(IngestConfig(source=str(args.mitdb)), tmp / "raw")
        lines.append(f"- ingest (local folder, 48 records, checksums verified): {time.perf_counter() - t:.2f} s "
                     f"({res.get('n_files', '?')} files, {res.get('bytes', 0) / 2**20:.1f} MiB)")
        raw = tmp / "raw"
    try:
        from sibeatgan.config import ValidateConfig
        from sibeatgan.data.validation import run_validate
        from sibeatgan.errors import ValidationFailed
    except ImportError:
        lines.append("- validate: skipped (sibeatgan.data.validation.run_validate not present)")
    else:
        t = time.perf_counter()
        try:
            run_validate(ValidateConfig(records=("all",)), raw, None, tmp / "validation")
            outcome = "passed"
        except ValidationFailed as err:
            outcome = "failed: " + err.summary.splitlines()[0]
        lines.append(f"- validate (record level, all 48 records, great_expectations import included): "
                     f"{time.perf_counter() - t:.2f} s ({outcome})")

    config = PreprocessConfig(**REF)
    for workers in (1, os.cpu_count() or 1):
        walls, computes = [], []
        for k in range(args.repeat):
            t = time.perf_counter()
            m = run_preprocess(config, raw, tmp / f"beats_{workers}_{k}", workers=workers)
            walls.append(time.perf_counter() - t)
            computes.append(m["preprocess_seconds"])
        size = (tmp / f"beats_{workers}_0" / "beats.npz").stat().st_size / 2**20
        lines.append(
            f"- preprocess, 44 records read from the 48-record folder, {workers} worker(s): "
            f"{statistics.median(walls):.2f} s wall (median of {args.repeat}, min {min(walls):.2f}); "
            f"beats {statistics.median(computes):.2f} s + writing beats.npz {statistics.median(walls) - statistics.median(computes):.2f} s; "
            f"{m['n_beats']:,} beats {m['counts']}; beats.npz {size:.1f} MiB"
        )
    t = stages(raw, config.records, args.biosppy)
    total = sum(v for k, v in t.items() if not k.startswith("("))
    lines.append(f"- where preprocess spends, one process, sum over the 44 records ({total:.2f} s):")
    lines += [f"  - {k}: {v:.2f} s" for k, v in sorted(t.items(), key=lambda kv: -kv[1])]

    shutil.rmtree(tmp, ignore_errors=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {stamp}\n" + "\n".join(lines) + "\n"
    out = HERE / "data.md"
    if not out.exists():
        out.write_text("# Data step timings\n\nWritten by `bench/bench_data.py`; one section per run. "
                       "Goal: preprocess of the 44 BeatGAN records under 10 s on 2 cores.\n")
    with open(out, "a") as fh:
        fh.write(section)
    print(section)


if __name__ == "__main__":
    main()
