"""Score one WFDB record with a logged or registered model: a CSV table per beat and a PNG of the record.

Beats are the record's annotated beats (of the model's grouping) when it has a .atr file, else the R peaks the
model's own preprocessing detects. A record at another sampling rate than the model's is resampled to it (and
summary.json says so); positions stay in the record's own samples. A record with no beat to score is an error.
The model: a URI, a logged model folder, or a training folder / generator file with its beat dataset.
The plot shows every beat's score over the record with the threshold, and an excerpt around the highest-scoring
beat: the filtered signal with the model's reconstruction, anomalous beats marked, and the reconstruction residual.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.errors import SibeatganError
from sibeatgan.files import atomic_open, write_json

log = logging.getLogger(__name__)


def _record_path(record: str | Path) -> tuple[Path, str]:
    p = Path(record)
    if p.suffix in (".hea", ".dat", ".atr"):
        p = p.with_suffix("")
    return p.parent, p.name


def load_model(model: str, dataset: str | Path | None = None) -> Any:
    """The BeatScorer of `model`: a model URI (models:/, runs:/), a logged model folder (with MLmodel), or a training
    folder / generator file with the beat `dataset` it was trained on (for its preprocessing settings)."""
    from sibeatgan.errors import ConfigError
    from sibeatgan.pyfunc import BeatScorer, load_scorer, preprocess_settings

    path = Path(model)
    if "://" in model or not path.exists():
        if dataset is not None:
            raise ConfigError(f"--dataset applies to a training folder or generator file, not to {model}")
        return load_scorer(model)
    if path.is_dir() and (path / "MLmodel").is_file():
        if dataset is not None:
            raise ConfigError(f"--dataset applies to a training folder or generator file; {model} is a logged model")
        return load_scorer(str(path))
    generator = path / "generator.pt" if path.is_dir() else path
    if path.is_dir() and not generator.is_file():
        raise ConfigError(f"{model} is neither a logged model folder (no MLmodel) nor a training folder (no generator.pt)")
    from sibeatgan.modelio import load_generator

    _, meta = load_generator(generator)  # a file that is not a model is refused here, as such
    if dataset is None:
        raise ConfigError(f"{model} is a training output, which lacks the preprocessing settings: give --dataset (the beat dataset "
                          f"it was trained on), or score a logged model (models:/NAME@ALIAS, runs:/ID/model)")
    from sibeatgan.data.artifact import read_manifest

    manifest = read_manifest(dataset)
    if meta.get("dataset_hash") and manifest.get("content_hash") and meta["dataset_hash"] != manifest["content_hash"]:
        raise ConfigError(f"{generator} was trained on dataset {meta['dataset_hash'][:12]}, but {dataset} is "
                          f"{manifest['content_hash'][:12]}: give the dataset it was trained on")
    return BeatScorer.from_generator(generator, preprocess_settings(dataset))


def run_score(model_uri: str, record: str | Path, out: str | Path, threshold: float | None = None,
              dataset: str | Path | None = None) -> dict[str, Any]:
    """Score `record` (folder/name, with or without .hea) with `model_uri` (see `load_model`); writes scores.csv,
    scores.png, summary.json. A record at another sampling rate is resampled to the model's (and says so); a record
    with no beat to score is an error."""
    from sibeatgan.data import beats
    from sibeatgan.data.preprocess import lead_columns
    from sibeatgan.data.records import read_header, read_record
    from sibeatgan.errors import RecordError
    from sibeatgan.pyfunc import finite_threshold

    folder, name = _record_path(record)
    out = Path(out)
    scorer = load_model(model_uri, dataset)
    thr = scorer.threshold if threshold is None else finite_threshold(threshold, "--threshold")
    annotated = (folder / f"{name}.atr").is_file()
    header = read_header(folder, name)
    rec = read_record(folder, name, annotations=annotated)  # refuses NaN (WFDB's no-data) samples, naming the first
    signal = rec.signal[:, list(lead_columns(header, tuple(scorer.prep["leads"])))]
    fs, model_fs = float(rec.fs), float(scorer.prep["fs"])
    if annotated:
        labels = beats.label_symbols(rec.ann_symbols, scorer.prep["grouping"])
        positions, symbols = rec.ann_samples[labels >= 0], rec.ann_symbols[labels >= 0]
        if not len(positions):
            raise RecordError(name, f"{name}.atr holds no beat of the model's classes ({scorer.prep['grouping']} grouping)")
    else:
        positions, symbols = None, None
    try:
        b = scorer.ecg_beats(signal, fs, positions)
    except SibeatganError as err:
        raise RecordError(name, str(err)) from None
    if symbols is None:
        symbols = np.full(len(b.positions), "")
    else:
        symbols = symbols[b.kept]
    resampled = fs != model_fs
    if resampled:
        log.warning("%s: recorded at %g Hz, resampled to the model's %g Hz before scoring (positions stay in the record's samples)",
                    name, fs, model_fs)
    scores = scorer.score(b.windows)
    flags = scores >= thr
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "scores.csv", "w") as fh:
        w = csv.writer(fh)
        w.writerow(["beat", "position", "time_s", "symbol", "score", "anomalous"])
        for i, (p, s, sc, f) in enumerate(zip(b.positions, symbols, scores, flags)):
            w.writerow([i, int(p), f"{p / fs:.3f}", s, f"{sc:.6g}", int(f)])
    png = out / "scores.png"
    plot_record(name, b.filtered[:, 0], model_fs, b.at_model, b.windows, scorer.reconstruct(b.windows), scores, thr, symbols,
                scorer.prep["before"], scorer.prep["after"], png)
    result = {"record": name, "model": model_uri, "beats_from": "annotations" if annotated else "detected R peaks",
              "n_beats": int(len(scores)), "n_anomalous": int(flags.sum()), "threshold": thr, "fs": fs, "model_fs": model_fs,
              "resampled": f"{fs:g} Hz -> {model_fs:g} Hz (scipy.signal.resample_poly, as preprocess)" if resampled else None,
              "n_dropped_at_ends": b.dropped, "csv": str(out / "scores.csv"), "plot": str(png)}
    write_json(out / "summary.json", result)
    log.info("%s: %d beats (%s%s), %d anomalous at threshold %.4g -> %s", name, result["n_beats"], result["beats_from"],
             f", resampled {result['resampled']}" if resampled else "", result["n_anomalous"], thr, out)
    return result


def plot_record(name: str, signal: np.ndarray, fs: float, positions: np.ndarray, windows: np.ndarray, recon: np.ndarray,
                scores: np.ndarray, threshold: float, symbols: np.ndarray, before: int, after: int, path: Path,
                excerpt_s: float = 8.0) -> Path:
    """Scores over the record, then an excerpt (around the top beat) with reconstruction and residual."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    flags = scores >= threshold
    t = positions / fs
    fig = Figure(figsize=(12, 8), layout="constrained")
    ax0, ax1, ax2 = fig.subplots(3, 1, gridspec_kw={"height_ratios": [1, 1.4, 0.8]})
    ax0.scatter(t[~flags], scores[~flags], s=4, color="0.5", label="normal")
    ax0.scatter(t[flags], scores[flags], s=8, color="tab:red", label=f"anomalous ({int(flags.sum())})")
    ax0.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax0.set(xlabel="time (s)", ylabel="anomaly score", title=f"record {name}: {len(scores)} beats",
            yscale="log" if (scores > 0).all() else "linear")
    ax0.legend(loc="upper right", fontsize=8)

    top = int(np.argmax(scores))
    lo_s = max(0, int(positions[top] - excerpt_s * fs / 2))
    hi_s = min(len(signal), lo_s + int(excerpt_s * fs))
    xs = np.arange(lo_s, hi_s)
    ax1.plot(xs / fs, signal[lo_s:hi_s], color="k", lw=0.8, label="signal (filtered)")
    ax2.axhline(0, color="0.7", lw=0.5)
    inside = np.flatnonzero((positions >= lo_s) & (positions < hi_s))
    for j, i in enumerate(inside):
        p = int(positions[i])
        left = p - before if j == 0 else (int(positions[inside[j - 1]]) + p) // 2
        right = p + after if j == len(inside) - 1 else (p + int(positions[inside[j + 1]])) // 2
        left, right = max(left, p - before, lo_s), min(right, p + after, hi_s)
        seg = signal[p - before : p + after]
        lo, span = seg.min(), seg.max() - seg.min()
        rec = (recon[i, 0] + 1) / 2 * span + lo  # the reconstruction back in signal units (inverse min-max)
        part = slice(left - (p - before), right - (p - before))
        tt = np.arange(left, right) / fs
        ax1.plot(tt, rec[part], color="tab:blue", lw=0.8, label="reconstruction" if j == 0 else None)
        ax2.plot(tt, seg[part] - rec[part], color="tab:red" if flags[i] else "tab:blue", lw=0.8)
        if flags[i]:
            for ax in (ax1, ax2):
                ax.axvspan((p - before) / fs, (p + after) / fs, color="tab:red", alpha=0.12, lw=0)
        ax1.annotate(f"{symbols[i]} {scores[i]:.3g}".strip(), (p / fs, signal[lo_s:hi_s].max()), fontsize=7, ha="center",
                     color="tab:red" if flags[i] else "0.3")
    ax1.set(ylabel="mV", title=f"excerpt around the highest-scoring beat (red: anomalous at the threshold)")
    ax1.legend(loc="lower right", fontsize=8)
    ax2.set(xlabel="time (s)", ylabel="residual (mV)", title="reconstruction residual: signal - reconstruction")
    FigureCanvasAgg(fig)
    with atomic_open(path) as fh:
        fig.savefig(fh, format="png", dpi=100)
    return path
