"""The served path measured: a model as a user serves it on raw records, beside the protocol's evaluation.

The protocol (train, evaluate) scores windows centred on *annotated* beats. A user who serves the pyfunc on raw
ECG gets windows centred on the R peaks the model detects. This script runs the pyfunc's own path
(sibeatgan.pyfunc.BeatScorer.ecg_beats, detected beats) on every raw record that holds fold-0 test beats, matches
the detections to the annotated beats one to one within a tolerance (150 ms by default, ANSI/AAMI EC57's), and
scores the fold's test beats both ways:

- protocol: the dataset's window at the annotation (what `sibeatgan evaluate` scores);
- served: the window at the matched detection; a test beat no detection matched is *missed*: it gets no score.

Figures: AUC and AP of both on the matched test beats (a record-level paired bootstrap of served - protocol), and
"served, misses last": every test beat, a missed one ranked below all others (never flagged, as a user would see
it). Counts: test beats matched / missed per class, detections that match no annotated beat, offsets of the
matched detections. A check: the pyfunc given the annotation positions (`params={"positions": ...}`) reproduces the
protocol's windows bit for bit. Per-beat scores go to OUT/scores.npz (float32), figures to OUT/served.json.

    PYTHONPATH=. python bench/served.py --dataset data/beats --model runs/teacher-f0 --source ../shared/data/mitdb \\
        --out bench/results/served
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sibeatgan.data import beats as beatlib  # noqa: E402
from sibeatgan.data.artifact import load, read_manifest  # noqa: E402
from sibeatgan.data.preprocess import lead_columns  # noqa: E402
from sibeatgan.data.records import read_header, read_record  # noqa: E402
from sibeatgan.data.splits import resolve_split  # noqa: E402
from sibeatgan.metrics import paired_compare, ranked_metrics  # noqa: E402
from sibeatgan.score import load_model  # noqa: E402

CLASSES = "NSVFQ"


def match(ann: np.ndarray, det: np.ndarray, tol: int) -> np.ndarray:
    """One-to-one matching of sorted detections to annotations: for each annotation the index of its detection or -1.
    Pairs within `tol` samples are taken closest first, each detection and annotation at most once."""
    out = np.full(len(ann), -1, dtype=np.int64)
    if not len(ann) or not len(det):
        return out
    j = np.searchsorted(det, ann)
    cand_a = np.concatenate([np.arange(len(ann)), np.arange(len(ann))])
    cand_d = np.concatenate([j - 1, j])
    ok = (cand_d >= 0) & (cand_d < len(det))
    cand_a, cand_d = cand_a[ok], cand_d[ok]
    dist = np.abs(det[cand_d] - ann[cand_a])
    keep = dist <= tol
    cand_a, cand_d, dist = cand_a[keep], cand_d[keep], dist[keep]
    used = np.zeros(len(det), dtype=bool)
    for k in np.argsort(dist, kind="stable"):
        a, d = cand_a[k], cand_d[k]
        if out[a] < 0 and not used[d]:
            out[a], used[d] = d, True
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="beat dataset (sibeatgan preprocess) the model was trained on")
    ap.add_argument("--model", required=True, help="training folder or generator.pt (with --dataset), or a model URI")
    ap.add_argument("--source", required=True, help="the raw WFDB records the dataset was made from")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--tolerance-ms", type=float, default=150.0)
    ap.add_argument("--records", default=None, help="comma-separated subset (default: every record with test beats)")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()

    ds = load(args.dataset)
    split = resolve_split(args.dataset, None, read_manifest(args.dataset)["content_hash"]).fold("beatgan", args.fold)
    test = np.sort(split.test)
    local = Path(args.model)
    scorer = load_model(args.model, args.dataset if local.exists() and not (local / "MLmodel").exists() else None)
    fs, before, after = float(scorer.prep["fs"]), scorer.prep["before"], scorer.prep["after"]
    tol = int(round(args.tolerance_ms / 1000 * fs))
    names = sorted(set(ds.records[test].tolist()))
    if args.records:
        names = [n for n in names if n in set(args.records.split(","))]

    rows: dict[str, list] = {k: [] for k in ("record", "label", "protocol", "served", "offset")}
    per_record, extra_scores, n_det_total, n_ann_total, n_ann_matched = [], [], 0, 0, 0
    bitwise_max = 0.0
    for name in names:
        source = Path(args.source)
        header = read_header(source, name)
        rec = read_record(source, name)
        signal = rec.signal[:, list(lead_columns(header, tuple(scorer.prep["leads"])))]
        served = scorer.ecg_beats(signal)  # the pyfunc's path on raw ECG: detected R peaks
        det = served.positions
        labels_all = beatlib.label_symbols(rec.ann_symbols, scorer.prep["grouping"])
        ann = rec.ann_samples[labels_all >= 0]
        m = match(ann, det, tol)
        matched_det = np.zeros(len(det), dtype=bool)
        matched_det[m[m >= 0]] = True
        n_det_total += len(det)
        n_ann_total += len(ann)
        n_ann_matched += int((m >= 0).sum())

        mine = test[ds.records[test] == name]
        ann_index = {int(s): i for i, s in enumerate(ann)}
        det_of = np.array([m[ann_index[int(s)]] for s in ds.samples[mine]], dtype=np.int64)
        protocol = scorer.score(ds.float_beats(mine))
        got = det_of >= 0
        served_scores = np.full(len(mine), np.nan, dtype=np.float32)
        if got.any():
            served_scores[got] = scorer.score(served.windows[det_of[got]])
        offsets = np.where(got, det[np.maximum(det_of, 0)] - ds.samples[mine], np.iinfo(np.int16).min).astype(np.int16)
        if (~matched_det).any():
            extra_scores.append(scorer.score(served.windows[~matched_det]))
        # The served path given the annotations: the protocol's windows exactly.
        exact = scorer.ecg_beats(signal, positions=ds.samples[mine])
        bitwise_max = max(bitwise_max, float(np.abs(exact.windows - ds.float_beats(mine)).max()))

        rows["record"].append(np.full(len(mine), names.index(name), dtype=np.int16))
        rows["label"].append(ds.labels[mine].astype(np.int8))
        rows["protocol"].append(protocol.astype(np.float32))
        rows["served"].append(served_scores)
        rows["offset"].append(offsets)
        per_record.append({"record": name, "annotated": int(len(ann)), "detected": int(len(det)), "matched": int((m >= 0).sum()),
                           "test_beats": int(len(mine)), "test_missed": int((~got).sum()),
                           "detections_unmatched": int((~matched_det).sum())})
        print(f"{name}: {len(ann)} annotated, {len(det)} detected, {int((m >= 0).sum())} matched; "
              f"{len(mine)} test beats, {int((~got).sum())} missed", flush=True)

    arr = {k: np.concatenate(v) for k, v in rows.items()}
    extra = np.concatenate(extra_scores) if extra_scores else np.empty(0, np.float32)
    got = np.isfinite(arr["served"])
    positive = arr["label"] != 0
    both = paired_compare(arr["protocol"][got], arr["served"][got], arr["label"][got], arr["record"][got], args.n_bootstrap)
    misses_last = np.where(got, arr["served"], -np.inf).astype(np.float64)
    misses_last[~got] = np.nanmin(arr["served"]) - 1.0  # below every scored beat: never flagged
    protocol_all = ranked_metrics(arr["protocol"], positive)
    served_all = ranked_metrics(misses_last, positive)
    off = arr["offset"][got].astype(np.int64)
    thr = scorer.threshold

    def at_threshold(scores: np.ndarray, pos: np.ndarray) -> dict[str, float]:
        flagged = scores >= thr
        return {"recall": float(flagged[pos].mean()), "false_alarm_rate": float(flagged[~pos].mean())}

    result = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
        "model": args.model, "threshold": thr, "fold": args.fold, "records": names, "n_records": len(names),
        "tolerance_samples": tol, "tolerance_ms": args.tolerance_ms,
        "annotated_beats": n_ann_total, "detections": n_det_total, "annotations_matched": n_ann_matched,
        "annotations_unmatched": n_ann_total - n_ann_matched, "detections_unmatched": n_det_total - n_ann_matched,
        "test_beats": int(len(arr["label"])), "test_matched": int(got.sum()), "test_missed": int((~got).sum()),
        "test_missed_by_class": {c: int(((arr["label"] == i) & ~got).sum()) for i, c in enumerate(CLASSES)},
        "test_by_class": {c: int((arr["label"] == i).sum()) for i, c in enumerate(CLASSES)},
        "offset_exact": float((off == 0).mean()), "offset_within_3": float((np.abs(off) <= 3).mean()),
        "offset_within_10": float((np.abs(off) <= 10).mean()), "offset_median_abs": float(np.median(np.abs(off))),
        "matched": {k: both[k] for k in ("auc_a", "auc_b", "delta_auc", "delta_auc_ci", "p_auc", "ap_a", "ap_b", "delta_ap",
                                         "delta_ap_ci", "p_ap", "n", "n_groups", "n_bootstrap")},
        "all_test_beats": {"protocol_auc": protocol_all["auc"], "protocol_ap": protocol_all["ap"],
                           "served_misses_last_auc": served_all["auc"], "served_misses_last_ap": served_all["ap"]},
        "at_threshold": {"protocol": at_threshold(arr["protocol"], positive), "served": at_threshold(misses_last, positive),
                         "unmatched_detections_flagged": float((extra >= thr).mean()) if len(extra) else None},
        "positions_given_max_abs_window_diff": bitwise_max,
        "per_record": per_record,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "scores.npz", record_names=np.array(names), unmatched_detection_scores=extra.astype(np.float32), **arr)
    (out / "served.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("matched", "all_test_beats", "test_missed", "offset_exact", "offset_within_3")}, indent=1))


if __name__ == "__main__":
    main()
