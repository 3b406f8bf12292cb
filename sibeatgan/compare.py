"""Paired comparison of two models from their `sibeatgan evaluate` folders: b - a in AUC and AP.

Both sides must have been scored on identical test beats (same dataset, same index arrays per fold);
anything else is refused. Intervals and p-values come from a paired bootstrap over records (patients):
one resample draws patients with replacement and both models are judged on the same drawn beats. Pooled
over folds and seeds, a drawn patient brings its beats in every fold and seed, so repeated looks at one
patient are not counted as independent evidence. With more than one trained pair (a unit: a seed, a fold),
the default level also resamples the units, so the interval counts training variance and not only patients
(level "unit+record"; the record-only figures of the same draws are reported beside it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from sibeatgan.errors import ConfigError, DatasetError
from sibeatgan.files import write_json, write_text
from sibeatgan.metrics import COMPARE_LEVELS, paired_compare_units

if TYPE_CHECKING:
    from sibeatgan.config import EvaluateConfig

log = logging.getLogger(__name__)


def _read_evaluation(path: Path) -> dict[str, Any]:
    file = Path(path) / "evaluation.json"
    if not file.is_file():
        raise DatasetError(f"{file} is missing: is {path} a folder written by `sibeatgan evaluate`?")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{file} is not valid JSON: {err}") from None


def _read_scores(path: Path, fold: str, records: np.ndarray | None) -> dict[str, np.ndarray]:
    """index, scores, labels and records of one fold; records come from the dataset for folders that lack them."""
    file = Path(path) / f"fold_{fold}" / "scores.npz"
    if not file.is_file():
        raise DatasetError(f"{file} is missing (fold {fold} of {path})")
    with np.load(file, allow_pickle=False) as npz:
        missing = [k for k in ("index", "scores", "labels") if k not in npz.files]
        if missing:
            raise DatasetError(f"{file}: missing array(s) {', '.join(missing)}")
        arrays = {k: npz[k] for k in ("index", "scores", "labels")}
        if "records" in npz.files:
            arrays["records"] = npz["records"].astype(str)
        elif records is not None:
            arrays["records"] = records[arrays["index"]]
        else:
            raise DatasetError(f"{file}: no records array (written by an older evaluate); pass the dataset to take them from it")
    return arrays


def run_compare(
    config: EvaluateConfig,
    dataset: Path | None,
    evaluation_a: Path | Sequence[Path],
    evaluation_b: Path | Sequence[Path],
    out: Path,
    level: str = "auto",
) -> dict[str, Any]:
    """Compare model b against model a per fold and pooled; several folders per side are seeds, paired in order.

    Uses config.n_bootstrap, config.ci and config.seed. `dataset` (optional) must be the one both were
    evaluated on. `level`: auto (unit+record where a row has more than one unit, else record), unit+record or
    record (patients only, each trained model taken as fixed). Writes compare.json and table.txt into `out`.
    """
    if level not in COMPARE_LEVELS:
        raise ConfigError(f"compare: unknown level {level!r}; use one of {', '.join(COMPARE_LEVELS)}")
    side_a = [Path(evaluation_a)] if isinstance(evaluation_a, (str, Path)) else [Path(p) for p in evaluation_a]
    side_b = [Path(evaluation_b)] if isinstance(evaluation_b, (str, Path)) else [Path(p) for p in evaluation_b]
    if not side_a or len(side_a) != len(side_b):
        raise ConfigError(f"compare: {len(side_a)} evaluation(s) for a and {len(side_b)} for b; give one b per a (seeds pair in order)")
    evaluations = {p: _read_evaluation(p) for p in side_a + side_b}
    hashes = {p: e.get("dataset_hash") for p, e in evaluations.items()}
    records = None
    if dataset is not None:
        from sibeatgan.data.artifact import load

        ds = load(dataset)
        expected = ds.content_hash()
        records = ds.records.astype(str)
    else:
        expected = hashes[side_a[0]]
    for p, h in hashes.items():
        if h != expected:
            raise DatasetError(f"{p} was evaluated on dataset {str(h)[:12]}, not {str(expected)[:12]}: compare models on one dataset")

    units: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for seed, (pa, pb) in enumerate(zip(side_a, side_b)):
        folds_a, folds_b = set(evaluations[pa]["folds"]), set(evaluations[pb]["folds"])
        if folds_a != folds_b:
            odd = sorted(folds_a ^ folds_b, key=int)[0]
            raise DatasetError(f"fold {odd} is evaluated in only one of {pa} and {pb}: both sides need the same folds")
        for fold in sorted(folds_a, key=int):
            split_a, split_b = (evaluations[p]["folds"][fold].get("split_hash") for p in (pa, pb))
            if split_a and split_b and split_a != split_b:
                raise DatasetError(f"fold {fold}: {pa} used split {split_a[:12]} and {pb} split {split_b[:12]}; compare models of one split")
            a, b = _read_scores(pa, fold, records), _read_scores(pb, fold, records)
            if a["index"].shape != b["index"].shape or not np.array_equal(a["index"], b["index"]):
                differ = np.setxor1d(a["index"], b["index"]).shape[0]
                raise DatasetError(
                    f"fold {fold}: {pa} ({a['index'].shape[0]} beats) and {pb} ({b['index'].shape[0]} beats) were scored on "
                    f"different test beats ({differ} not shared); compare models evaluated on one split"
                )
            if not np.array_equal(a["labels"], b["labels"]):
                raise DatasetError(f"fold {fold}: {pa} and {pb} give the same beats different labels")
            units.setdefault(fold, []).append((a["scores"], b["scores"], a["labels"], a["records"]))
            log.debug("pair %d fold %s: %d beats", seed, fold, a["index"].shape[0])

    n_units = sum(len(u) for u in units.values())
    if level == "unit+record" and n_units < 2:
        raise ConfigError("compare: level unit+record needs at least 2 trained pairs (seeds or folds); this comparison has 1")
    boot = dict(n_bootstrap=config.n_bootstrap, seed=config.seed, ci=config.ci)
    # a fold with one seed has one unit: its row is record-level whatever the level asked for the pooled one
    per_fold = {fold: paired_compare_units(u, **boot, level=level if len(u) > 1 else "auto") for fold, u in units.items()}
    # one fold: pooled is that fold (the same units and draws), so it is not bootstrapped twice
    everything = [x for u in units.values() for x in u]
    pooled = next(iter(per_fold.values())) if len(units) == 1 else paired_compare_units(everything, **boot, level=level)
    from sibeatgan.config import to_dict

    result = {
        "a": [str(p) for p in side_a],
        "b": [str(p) for p in side_b],
        "n_seeds": len(side_a),
        "dataset_hash": expected,
        "delta": "b - a",
        "groups": "record (patient), shared across folds and seeds",
        "level": level,
        "units": "one trained pair (fold, seed); unit+record resamples them too, so training variance counts",
        "folds": per_fold,
        "pooled": pooled,
        "config": to_dict(config),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", result)
    write_text(out / "table.txt", format_compare_table(result) + "\n")
    return result


def _delta(r: dict[str, Any], key: str) -> str:
    text = f"{r[f'delta_{key}']:+.4f}"
    lo_hi = r.get(f"delta_{key}_ci")
    if lo_hi:
        text += f" [{lo_hi[0]:+.4f}, {lo_hi[1]:+.4f}] p={r[f'p_{key}']:.3f}"
    return text


def format_compare_table(result: dict[str, Any]) -> str:
    """compare.json as text: one row per fold and one pooled, AUC and AP of a and b and their difference."""
    r0 = result["pooled"]
    ci = (f"{100 * r0['ci']:g}% intervals and two-sided p from {r0['n_bootstrap']} paired {r0['bootstrap']}-level resamples"
          if r0.get("delta_auc_ci") else "no intervals (n_bootstrap=0)")
    if r0.get("delta_auc_ci") and r0["bootstrap"] == "unit+record":
        ci += f" (the {r0['n_units']} units drawn {r0['units_drawn']} at a time, patients within them)"
    lines = [f"b - a; a: {', '.join(result['a'])}; b: {', '.join(result['b'])}", ci,
             f"{'fold':<8}{'beats':>8}{'rec':>5}  {'AUC a':>7}{'AUC b':>8}  {'delta AUC':<36}{'AP a':>7}{'AP b':>8}  delta AP"]
    rows = [(k, v) for k, v in result["folds"].items()] + [("pooled", r0)]
    for name, r in rows:
        lines.append(f"{name:<8}{r['n']:>8,}{r['n_groups']:>5}  {r['auc_a']:>7.4f}{r['auc_b']:>8.4f}  {_delta(r, 'auc'):<36}"
                     f"{r['ap_a']:>7.4f}{r['ap_b']:>8.4f}  {_delta(r, 'ap')}")
    redrawn = {name: r.get("redrawn", 0) for name, r in rows if r.get("redrawn")}
    if redrawn:
        lines.append("record resamples drawn again because a unit lacked normal or anomalous beats: "
                     + ", ".join(f"{k} {v}" for k, v in redrawn.items()))
    if result["n_seeds"] > 1 or len(result["folds"]) > 1:
        lines.append(f"pooled: mean over {len(result['folds'])} fold(s) x {result['n_seeds']} seed(s); patients resampled jointly")
    record_only = [(name, r) for name, r in rows if r.get("record_only")]
    for name, r in record_only:
        ro = r["record_only"]
        lines.append(f"{name}: record-only (each trained model taken as fixed): delta AUC [{ro['delta_auc_ci'][0]:+.4f}, "
                     f"{ro['delta_auc_ci'][1]:+.4f}] p={ro['p_auc']:.3f}; unit SD of delta AUC {r['unit_sd_delta_auc']:.4f}")
    if any(r["n_units"] < 5 for _, r in record_only):
        lines.append("fewer than 5 units: the unit level of the interval rests on few trained models and is rough")
    return "\n".join(lines)
