"""Rebuild every bench table that has per-beat scores from those scores alone: no model, no GPU, no dataset.

A table in bench/*.md is recomputable when it sits between two markers,

    <!-- recompute: RESULTS#TABLE -->
    | ... the table ... |
    <!-- /recompute -->

and bench/results/RESULTS/recompute.json says how to build TABLE from the per-beat scores kept beside it
(`keep` writes them: each evaluation's evaluation.json and, per fold, scores.npz with index, records, labels
and float32 scores, about 0.1 MB per model per fold). Tables without markers have no scores; their files say so.

    python bench/recompute.py                  # check: exit 1 and a diff when a table differs from its scores
    python bench/recompute.py --write          # rewrite the tables from the scores
    python bench/recompute.py keep EVAL DEST   # keep an evaluation's scores (from `sibeatgan evaluate`) in DEST

recompute.json: {"models": {NAME: folder under RESULTS, ...}, "tables": {TABLE: {"kind": "models", "rows": [NAME, ...]}
or {"kind": "compare", "n_bootstrap": B, "seed": S, "ci": C, "rows": [{"name": ..., "a": [NAME, ...], "b": [NAME, ...],
"level": "auto"}]}}}: a models table gives each model's AUC and AP per fold, a compare table `sibeatgan compare`'s
pooled row of each comparison (its intervals drawn with the seed given, so they recompute to the digit).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH = ROOT / "bench"
MARKER = re.compile(r"<!-- recompute: (?P<results>[\w.-]+)#(?P<table>[\w.-]+) -->\n(?P<body>.*?)<!-- /recompute -->", re.S)


def keep(evaluation: Path, dest: Path) -> list[Path]:
    """Copy an evaluation's evaluation.json and each fold's test scores (index int32, records, labels int8, scores float32)."""
    evaluation, dest = Path(evaluation), Path(dest)
    meta = json.loads((evaluation / "evaluation.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(evaluation / "evaluation.json", dest / "evaluation.json")
    written = [dest / "evaluation.json"]
    for fold in meta["folds"]:
        with np.load(evaluation / f"fold_{fold}" / "scores.npz", allow_pickle=False) as npz:
            arrays = dict(index=npz["index"].astype(np.int32), records=npz["records"].astype(str),
                          labels=npz["labels"].astype(np.int8), scores=npz["scores"].astype(np.float32))
        (dest / f"fold_{fold}").mkdir(exist_ok=True)
        np.savez_compressed(dest / f"fold_{fold}" / "scores.npz", **arrays)
        written.append(dest / f"fold_{fold}" / "scores.npz")
    return written


def _spec(results: str) -> tuple[Path, dict[str, Any]]:
    folder = BENCH / "results" / results
    file = folder / "recompute.json"
    if not file.is_file():
        raise SystemExit(f"recompute: {file} is missing: a marked table needs its results folder's recompute.json")
    return folder, json.loads(file.read_text())


def _model_dir(folder: Path, spec: dict[str, Any], name: str) -> Path:
    if name not in spec["models"]:
        raise SystemExit(f"recompute: model {name!r} is not in {folder / 'recompute.json'} (known: {', '.join(spec['models'])})")
    return folder / spec["models"][name]


def _models_table(folder: Path, spec: dict[str, Any], table: dict[str, Any]) -> str:
    from sibeatgan.metrics import ranked_metrics

    lines = ["| model | fold | test beats | anomalous | records | AUC | AP |", "|---|---|---|---|---|---|---|"]
    for name in table["rows"]:
        path = _model_dir(folder, spec, name)
        for fold in sorted(json.loads((path / "evaluation.json").read_text())["folds"], key=int):
            with np.load(path / f"fold_{fold}" / "scores.npz", allow_pickle=False) as npz:
                scores, labels, records = npz["scores"], npz["labels"], npz["records"]
            r = ranked_metrics(scores, labels != 0)
            lines.append(f"| {name} | {fold} | {scores.shape[0]:,} | {int((labels != 0).sum()):,} | {np.unique(records).shape[0]} | "
                         f"{r['auc']:.4f} | {r['ap']:.4f} |")
    return "\n".join(lines)


def _compare_table(folder: Path, spec: dict[str, Any], table: dict[str, Any]) -> str:
    from sibeatgan.compare import run_compare
    from sibeatgan.config import EvaluateConfig

    config = EvaluateConfig(n_bootstrap=int(table["n_bootstrap"]), seed=int(table.get("seed", 0)), ci=float(table.get("ci", 0.95)))
    pct = f"{100 * config.ci:g}%"
    lines = [f"| comparison (b - a) | units | level | delta AUC [{pct} CI] | p | delta AP [{pct} CI] | p | record-only delta AUC CI |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table["rows"]:
        a = [_model_dir(folder, spec, n) for n in row["a"]]
        b = [_model_dir(folder, spec, n) for n in row["b"]]
        with tempfile.TemporaryDirectory() as tmp:
            r = run_compare(config, None, a, b, Path(tmp), level=row.get("level", "auto"))["pooled"]
        ci = lambda k: f"{r[f'delta_{k}']:+.4f} [{r[f'delta_{k}_ci'][0]:+.4f}, {r[f'delta_{k}_ci'][1]:+.4f}]"  # noqa: E731
        rec = r.get("record_only")
        rec_text = f"[{rec['delta_auc_ci'][0]:+.4f}, {rec['delta_auc_ci'][1]:+.4f}]" if rec else "(the same)"
        lines.append(f"| {row['name']} | {r['n_units']} | {r['bootstrap']} | {ci('auc')} | {r['p_auc']:.3f} | {ci('ap')} | "
                     f"{r['p_ap']:.3f} | {rec_text} |")
    return "\n".join(lines)


KINDS = {"models": _models_table, "compare": _compare_table}


def build(results: str, name: str) -> str:
    """The markdown of table `name` of results folder `results`, from its scores."""
    folder, spec = _spec(results)
    table = spec.get("tables", {}).get(name)
    if table is None:
        raise SystemExit(f"recompute: table {name!r} is not in {folder / 'recompute.json'}")
    if table.get("kind") not in KINDS:
        raise SystemExit(f"recompute: table {name!r} has kind {table.get('kind')!r}; use one of {', '.join(KINDS)}")
    return KINDS[table["kind"]](folder, spec, table)


def marked(paths: list[Path] | None = None) -> list[tuple[Path, str, str, str]]:
    """Every marked table: (file, results, table, text in the file)."""
    found = []
    for path in paths if paths is not None else sorted(BENCH.glob("*.md")):
        for m in MARKER.finditer(path.read_text()):
            found.append((path, m["results"], m["table"], m["body"].strip()))
    return found


def check(paths: list[Path] | None = None, write: bool = False) -> list[str]:
    """Rebuild every marked table; the differences (unified diffs), or none. `write` puts the rebuilt tables in place."""
    diffs = []
    for path in paths if paths is not None else sorted(BENCH.glob("*.md")):
        text = path.read_text()

        def rebuilt(m: re.Match) -> str:
            fresh = build(m["results"], m["table"])
            if fresh != m["body"].strip():
                diffs.append("".join(difflib.unified_diff((m["body"].strip() + "\n").splitlines(True), (fresh + "\n").splitlines(True),
                                                          f"{path.name} ({m['results']}#{m['table']})", "from the scores")))
            return f"<!-- recompute: {m['results']}#{m['table']} -->\n{fresh}\n<!-- /recompute -->"

        new = MARKER.sub(rebuilt, text)
        if write and new != text:
            path.write_text(new)
    return diffs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="*", help="nothing (check), or: keep EVALUATION DEST")
    p.add_argument("--write", action="store_true", help="rewrite the marked tables from their scores")
    args = p.parse_args()
    if args.command:
        if args.command[0] != "keep" or len(args.command) != 3:
            raise SystemExit("recompute: commands are none (check) or `keep EVALUATION DEST`")
        for f in keep(Path(args.command[1]), Path(args.command[2])):
            print(f"{f} ({f.stat().st_size:,} bytes)")
        return
    tables = marked()
    diffs = check(write=args.write)
    for d in diffs:
        print(d)
    verb = "rewrote" if args.write else "differ"
    print(f"{len(tables)} table(s) rebuilt from their scores; {len(diffs)} {verb}")
    if diffs and not args.write:
        sys.exit(1)


if __name__ == "__main__":
    main()
