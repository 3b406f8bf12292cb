"""The preprocess step: WFDB records -> the beat dataset artifact, by the BeatGAN protocol.

Per record (records run in parallel processes): the configured leads, band-passed; R peaks found
on the first lead as the BeatGAN reference did (rpeaks.py); one window of `before` + `after` samples
per annotated beat of the grouping whose window fits the signal; normal beats kept only within
`rpeak_tolerance` samples (strictly) of an R peak; each window min-max scaled to [-1, 1].
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sibeatgan.config import PreprocessConfig, to_dict
from sibeatgan.data import artifact, beats, rpeaks
from sibeatgan.data.records import Header, read_header, read_record
from sibeatgan.data.splits import assign_folds, build_splits, default_split_dir, save_split
from sibeatgan.errors import ConfigError, RecordError, SourceError
from sibeatgan.files import sha256_file
from sibeatgan.procs import die_with_parent, stop_processes

log = logging.getLogger(__name__)

PRIMARY_LEAD = "MLII"


@dataclass(frozen=True)
class _Job:
    """Everything a worker process needs for one record (picklable)."""

    source: str
    name: str
    lead_cols: tuple[int, ...]
    rpeak_col: int  # R peaks are found on MLII where the record has it, whatever the leads kept
    signal_files: tuple[str, ...]  # from the header read in _jobs, for the manifest's checksums
    fs: int
    resample: bool
    before: int
    after: int
    band: tuple[str, float, float, int]
    rpeak_check: bool
    rpeak_tolerance: int
    grouping: str
    rpeak_engine: str


def lead_columns(header: Header, leads: tuple[str, ...]) -> tuple[int, ...]:
    """Column of each configured lead; ('all',) = every column, MLII first (record 114 keeps it second)."""
    if tuple(leads) == ("all",):
        cols = list(range(header.n_sig))
        if PRIMARY_LEAD in header.sig_names:
            first = header.sig_names.index(PRIMARY_LEAD)
            cols = [first] + [c for c in cols if c != first]
        return tuple(cols)
    missing = [lead for lead in leads if lead not in header.sig_names]
    if missing:
        raise RecordError(header.name, f"has no lead {', '.join(missing)}; its leads are {', '.join(header.sig_names)}")
    return tuple(header.sig_names.index(lead) for lead in leads)


def _process(job: _Job) -> dict[str, Any]:
    """Beats of one record; errors come back as values naming the record (a RecordError does not pickle)."""
    try:
        return _process_record(job)
    except RecordError as err:
        return {"error": (err.record, err.problem)}
    except Exception as err:  # noqa: BLE001 - any other failure still names its record; the traceback goes to the log
        return {"error": (job.name, f"preprocessing failed ({type(err).__name__}: {err})"), "traceback": traceback.format_exc()}


def _process_record(job: _Job) -> dict[str, Any]:
    source = Path(job.source)
    rec = read_record(source, job.name)
    signal, samples = rec.signal, rec.ann_samples
    if rec.fs != job.fs:
        if not job.resample:
            raise RecordError(job.name, f"sampling rate is {rec.fs:g} Hz, the configuration expects {job.fs} Hz")
        from scipy.signal import resample_poly

        ratio = Fraction(job.fs) / Fraction(rec.fs).limit_denominator(1000)
        signal = resample_poly(signal, ratio.numerator, ratio.denominator, axis=0)
        samples = np.minimum(np.rint(samples * float(ratio)).astype(np.int64), signal.shape[0] - 1)
    n = signal.shape[0]
    labels = beats.label_symbols(rec.ann_symbols, job.grouping)
    in_class = labels >= 0
    fits = in_class & beats.window_fits(samples, n, job.before, job.after)
    keep = fits.copy()

    kind, low, high, order = job.band
    is_reference = kind == "fir" and (low, high) == rpeaks.REFERENCE_BAND_HZ and (order | 1) == (int(0.3 * job.fs) | 1)
    filtered = beats.bandpass(signal[:, list(job.lead_cols)], job.fs, low, high, order, kind)
    if job.rpeak_check:
        if is_reference and job.rpeak_col == job.lead_cols[0]:
            for_peaks = filtered[:, 0]  # already the reference filter's output: no second pass
        else:
            for_peaks = rpeaks.reference_filter(signal[:, job.rpeak_col], job.fs)
        normal = fits & (labels == 0)
        peaks = rpeaks.detect_rpeaks(for_peaks, job.fs, engine=job.rpeak_engine)
        near = beats.nearest_distance(samples[normal], peaks) < job.rpeak_tolerance
        keep[np.flatnonzero(normal)[~near]] = False

    idx = np.flatnonzero(keep)
    windows = beats.minmax_scale(beats.cut_windows(filtered, samples[idx], job.before, job.after))
    files = sorted({f"{job.name}.hea", f"{job.name}.atr", *job.signal_files})
    return {
        "name": job.name,
        "beats": artifact.quantize(windows),
        "labels": labels[idx],
        "symbols": beats.symbol_codes(rec.ann_symbols[idx]),
        "samples": samples[idx].astype(np.int64),
        "flat": int((windows.max(axis=-1) == windows.min(axis=-1)).any(axis=-1).sum()),
        "dropped_edge": int((in_class & ~fits).sum()),
        "dropped_rpeak": int((fits & ~keep).sum()),
        "sources": {f: sha256_file(source / f) for f in files},
        "fs": rec.fs,
    }


def _check_config(config: PreprocessConfig, kind: str) -> None:
    if config.before < 1 or config.after < 1:
        raise ConfigError(f"PreprocessConfig.before/after: must be at least 1, got {config.before}/{config.after}")
    if not config.records:
        raise ConfigError("PreprocessConfig.records: is empty")
    if not config.leads:
        raise ConfigError("PreprocessConfig.leads: is empty")
    if config.n_folds < 1:
        raise ConfigError(f"PreprocessConfig.n_folds: must be at least 1, got {config.n_folds}")
    if config.rpeak_tolerance < 1:
        raise ConfigError(f"PreprocessConfig.rpeak_tolerance: must be at least 1, got {config.rpeak_tolerance}")
    if config.grouping not in beats.GROUPINGS:
        raise ConfigError(f"PreprocessConfig.grouping: {config.grouping!r} is not one of {', '.join(beats.GROUPINGS)}")
    beats.check_bandpass(kind, config.fs, config.bandpass_low_hz, config.bandpass_high_hz, config.bandpass_order)


def _jobs(config: PreprocessConfig, source: Path, kind: str, rpeak_engine: str) -> list[_Job]:
    """Check every record's header (presence, rate, leads) before any signal is read."""
    if not source.is_dir():
        raise SourceError(f"{source} is not a folder")
    present = {p.stem for p in source.glob("*.hea")}
    missing = [r for r in config.records if r not in present]
    if missing:
        raise RecordError(missing[0], f"is not in {source} (missing: {', '.join(missing)})")
    jobs, n_cols = [], None
    for name in config.records:
        h = read_header(source, name)
        if h.fs != config.fs and config.on_other_fs != "resample":
            raise RecordError(name, f"sampling rate is {h.fs:g} Hz, the configuration expects {config.fs} Hz "
                                    "(set on_other_fs=resample to resample it)")
        cols = lead_columns(h, config.leads)
        rpeak_col = h.sig_names.index(PRIMARY_LEAD) if PRIMARY_LEAD in h.sig_names else cols[0]
        if n_cols is not None and len(cols) != n_cols:
            raise RecordError(name, f"has {len(cols)} leads, the records before it have {n_cols}")
        n_cols = len(cols)
        jobs.append(_Job(
            str(source), name, cols, rpeak_col, tuple(h.file_names), config.fs, config.on_other_fs == "resample", config.before, config.after,
            (kind, config.bandpass_low_hz, config.bandpass_high_hz, config.bandpass_order),
            config.rpeak_check, config.rpeak_tolerance, config.grouping, rpeak_engine,
        ))
    return jobs


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[dict[str, Any]]:
    bar = tqdm(total=len(jobs), desc="preprocess", unit="record", disable=not progress)
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_process(job))
            bar.update()
    else:
        # fork is cheap and safe here unless torch's threads already exist in this process
        method = "fork" if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules else "spawn"
        # each worker dies with this process (SIGKILL included); an error or SIGTERM here stops them at once
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=die_with_parent, initargs=(os.getpid(),))
        try:
            for res in pool.map(_process, jobs):
                results.append(res)
                bar.update()
        except BaseException:
            workers_left = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            stop_processes(workers_left)
            raise
        pool.shutdown()
    bar.close()
    for res in results:
        if "error" in res:
            if "traceback" in res:
                log.debug("record %s:\n%s", res["error"][0], res["traceback"])
            raise RecordError(*res["error"])
    return results


def run_preprocess(
    config: PreprocessConfig,
    source: Path,
    out: Path,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Build the beat dataset from the WFDB records in `source` and write it to `out`; returns the manifest.

    workers: processes (default: one per CPU, at most one per record); the output does not depend on it.
    """
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    kind, rpeak_engine = config.bandpass_type, config.rpeak_engine
    _check_config(config, kind)
    jobs = _jobs(config, source, kind, rpeak_engine)
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    results = _run_jobs(jobs, workers, progress)

    length = config.before + config.after
    n_leads = len(jobs[0].lead_cols)
    labels = np.concatenate([r["labels"] for r in results]).astype(np.int8)
    ds = artifact.BeatDataset(
        beats=np.concatenate([r["beats"] for r in results]).reshape(-1, n_leads, length),
        labels=labels,
        symbols=np.concatenate([r["symbols"] for r in results]).astype(np.uint8),
        records=np.concatenate([np.full(r["labels"].shape[0], r["name"]) for r in results]).astype(str),
        samples=np.concatenate([r["samples"] for r in results]).astype(np.int64),
        folds=assign_folds(labels, config.n_folds, config.seed),
    )
    if len(ds) == 0:
        raise SourceError(f"no beats of the {config.grouping} grouping in records {', '.join(config.records)} of {source}")
    sources = {f: h for r in results for f, h in r["sources"].items()}
    per_record = {r["name"]: {c: int((r["labels"] == i).sum()) for i, c in enumerate(artifact.CLASSES)} for r in results}
    extra = {
        "config": to_dict(config),
        "sources": dict(sorted(sources.items())),
        "grouping": {"name": config.grouping, **beats.GROUPINGS[config.grouping]},
        "records": [r["name"] for r in results],
        "per_record_counts": per_record,
        "dropped": {
            "window_outside_signal": sum(r["dropped_edge"] for r in results),
            "normal_without_rpeak": sum(r["dropped_rpeak"] for r in results),
        },
        "flat_windows": sum(r["flat"] for r in results),
        "resampled": {r["name"]: r["fs"] for r in results if r["fs"] != config.fs},
        "rpeak_engine": rpeak_engine,
        "preprocess_seconds": round(time.perf_counter() - started, 3),
    }
    split_set = build_splits(ds)  # the default split artifact (SplitConfig's defaults), beside the beats
    extra["default_split"] = {"path": "split", "hash": split_set.hash, "split_seed": split_set.split_seed}
    manifest = artifact.save(ds, out, manifest_extra=extra)
    save_split(split_set, default_split_dir(out))
    log.info(
        "preprocess: %d records, %d beats %s (dropped: %d outside the signal, %d normal without R peak) -> %s in %.1f s",
        len(results), len(ds), manifest["counts"], extra["dropped"]["window_outside_signal"],
        extra["dropped"]["normal_without_rpeak"], out, extra["preprocess_seconds"],
    )
    return manifest
