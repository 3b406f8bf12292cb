"""The validation gate: great-expectations suites over WFDB records and over a beat dataset.

Each level is first reduced with numpy to a small table (one row per record, one row per
beat, ...) which great-expectations then checks, so 100k beats validate in seconds. Every
problem is reported, never just the first; validation.json and validation.html are written
before `ValidationFailed` is raised.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from sibeatgan.config import ValidateConfig, to_dict
from sibeatgan.data import artifact, records as wfdb_records
from sibeatgan.errors import ConfigError, DatasetError, RecordError, SourceError, ValidationFailed
from sibeatgan.files import write_text

log = logging.getLogger(__name__)

QUANT = 1.0 / artifact.SCALE  # one int16 quantisation step of a [-1, 1] beat
SHOWN = 10  # offending rows named per failed expectation in the summary


@dataclass
class Check:
    """One expectation, its readable name and the columns that explain an offending row."""

    name: str
    expectation: Any  # a great_expectations.expectations.Expectation
    columns: tuple[str, ...]


@dataclass
class Table:
    """A frame to validate and its checks; `error` set when the input could not be read at all."""

    suite: str
    what: str  # what one row is: "record", "beat", ...
    frame: pd.DataFrame | None
    checks: list[Check] = field(default_factory=list)
    index: tuple[str, ...] = ()
    error: str | None = None


# ---------------------------------------------------------------- record level


def record_table(folder: Path, names: Sequence[str], required_lead: str, progress: bool = False) -> pd.DataFrame:
    """One row per record from its header, signal and annotation files; unreadable parts become errors in the row."""
    rows = []
    for name in tqdm(names, desc="records", unit="rec", disable=not progress):
        row: dict[str, Any] = {"record": name, "header_error": None, "fs": None, "n_leads": None, "leads": None,
                               "has_required_lead": None, "length_s": None, "dat_error": None,
                               "dat_bytes": None, "dat_expected_bytes": None, "signal_error": None, "annotation_error": None,
                               "n_annotations": None}
        try:
            h = wfdb_records.read_header(folder, name)
        except RecordError as err:
            row["header_error"] = err.problem
            h = None
        if h is not None:
            row.update(fs=h.fs, n_leads=h.n_sig, leads=",".join(h.sig_names),
                       has_required_lead=required_lead in h.sig_names, length_s=h.n_samples / h.fs)
            row["dat_expected_bytes"], row["dat_bytes"], row["dat_error"] = _dat_sizes(folder, h)
            if row["dat_error"] is None and row["dat_bytes"] == row["dat_expected_bytes"]:
                try:  # decode the signal: garbage bytes show up as WFDB's no-data value
                    wfdb_records.read_record(folder, name, annotations=False)
                except RecordError as err:
                    row["signal_error"] = err.problem
        try:
            samples, _ = wfdb_records.read_annotations(folder, name)
            row["n_annotations"] = int(samples.size)
        except RecordError as err:
            row["annotation_error"] = err.problem
        rows.append(row)
    types = {"fs": "float64", "length_s": "float64", "has_required_lead": "boolean", "n_leads": "Int64",
             "dat_bytes": "Int64", "dat_expected_bytes": "Int64", "n_annotations": "Int64"}
    return pd.DataFrame(rows).astype(types)


def _dat_sizes(folder: Path, h: wfdb_records.Header) -> tuple[int | None, int | None, str | None]:
    """(bytes the header promises, bytes on disk, problem) over the record's signal files."""
    try:
        needed = wfdb_records.signal_file_bytes(h)
    except RecordError as err:
        return None, None, err.problem
    expected = actual = 0
    for fname, (n, _) in needed.items():
        path = Path(folder) / fname
        if not path.is_file():
            return None, None, f"signal file {fname} is missing"
        expected += n
        actual += path.stat().st_size
    return expected, actual, None


def record_checks(config: ValidateConfig) -> list[Check]:
    gxe = _gx().expectations
    return [
        Check("header readable", gxe.ExpectColumnValuesToBeNull(column="header_error"), ("header_error",)),
        Check(f"fs == {config.fs} Hz", gxe.ExpectColumnValuesToBeInSet(column="fs", value_set=[float(config.fs)]), ("fs",)),
        Check(f"n_leads == {config.n_leads}", gxe.ExpectColumnValuesToBeInSet(column="n_leads", value_set=[config.n_leads]),
              ("n_leads", "leads")),
        Check(f"lead {config.required_lead} present",
              gxe.ExpectColumnValuesToBeInSet(column="has_required_lead", value_set=[True]), ("leads",)),
        Check(f"length >= {config.min_length_s:g} s",
              gxe.ExpectColumnValuesToBeBetween(column="length_s", min_value=float(config.min_length_s)), ("length_s",)),
        Check("signal files present", gxe.ExpectColumnValuesToBeNull(column="dat_error"), ("dat_error",)),
        Check(".dat size matches the header",
              gxe.ExpectColumnPairValuesToBeEqual(column_A="dat_bytes", column_B="dat_expected_bytes",
                                                  ignore_row_if="either_value_is_missing"),
              ("dat_bytes", "dat_expected_bytes")),
        Check("signal decodes (no invalid samples)", gxe.ExpectColumnValuesToBeNull(column="signal_error"), ("signal_error",)),
        Check("annotations readable", gxe.ExpectColumnValuesToBeNull(column="annotation_error"), ("annotation_error",)),
        Check("annotations non-empty", gxe.ExpectColumnValuesToBeBetween(column="n_annotations", min_value=1),
              ("n_annotations",)),
    ]


def record_tables(config: ValidateConfig, raw: Path, names: Sequence[str] | None, progress: bool) -> list[Table]:
    if any((raw / f).is_file() for f in ("manifest.json", "beats.npz")):  # one clear line, not an error per record
        return [Table("records", "record", None,
                      error=f"{raw} is a beat dataset (manifest.json, beats.npz), not a WFDB folder: use --dataset {raw}")]
    try:
        names = list(names) if names is not None else wfdb_records.list_records(raw)
    except SourceError as err:
        return [Table("records", "record", None, error=str(err))]
    if not names:
        return [Table("records", "record", None, error="no records to validate (the record list is empty)")]
    df = record_table(raw, names, config.required_lead, progress)
    return [Table("records", "record", df, record_checks(config), ("record",))]


# ---------------------------------------------------------------- beat level


def beat_frame(ds: artifact.BeatDataset) -> pd.DataFrame:
    """One row per beat: record, sample, label name, finite flag, min/max and the worst lead's min/max."""
    b = ds.beats
    n = b.shape[0]
    if b.shape[1] == 0 or b.shape[2] == 0:
        lo = hi = np.full((n, 1), np.nan)
        finite = np.ones(n, dtype=bool)
    elif np.issubdtype(b.dtype, np.integer):
        lo = b.min(axis=2).astype(np.float64) / artifact.SCALE
        hi = b.max(axis=2).astype(np.float64) / artifact.SCALE
        finite = np.ones(n, dtype=bool)
    else:  # a float artifact is taken as already scaled to [-1, 1]; NaN/inf are left to the `finite` check
        ok = np.isfinite(b)
        finite = ok.reshape(n, -1).all(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmin(np.where(ok, b, np.nan), axis=2).astype(np.float64)
            hi = np.nanmax(np.where(ok, b, np.nan), axis=2).astype(np.float64)
    names = np.asarray(artifact.CLASSES, dtype=object)
    lab = ds.labels.astype(np.int64)
    known = (lab >= 0) & (lab < len(names))
    label = np.where(known, names[np.clip(lab, 0, len(names) - 1)], lab.astype(str).astype(object))
    return pd.DataFrame({
        "record": ds.records,
        "sample": ds.samples,
        "label": label,
        "finite": finite,
        "min": lo.min(axis=1),  # lowest value of the beat over all leads
        "max": hi.max(axis=1),
        "lead_min": lo.max(axis=1),  # the least negative lead minimum
        "lead_max": hi.min(axis=1),  # the smallest lead maximum
    })


def manifest_records(manifest: dict[str, Any]) -> list[str] | None:
    """The records preprocess was asked for: `records`, or `config.records` / `preprocess.records`."""
    for holder in (manifest, manifest.get("config"), manifest.get("preprocess")):
        if isinstance(holder, dict) and isinstance(holder.get("records"), (list, tuple)):
            return [str(r) for r in holder["records"]]
    return None


def count_bounds(config: ValidateConfig) -> dict[str, tuple[int, int | None]]:
    """Inclusive (low, high) count per class; without expected counts only N must be present."""
    if config.expected_counts is None:
        return {"N": (1, None)}
    unknown = sorted(set(config.expected_counts) - set(artifact.CLASSES))
    if unknown:
        raise ConfigError(f"ValidateConfig.expected_counts: unknown class(es) {', '.join(unknown)}; "
                          f"known: {', '.join(artifact.CLASSES)}")
    if not 0 <= config.count_tolerance < 1:
        raise ConfigError(f"ValidateConfig.count_tolerance: must be within [0, 1), got {config.count_tolerance}")
    tol = config.count_tolerance
    return {c: (math.floor(e * (1 - tol)), math.ceil(e * (1 + tol))) for c, e in config.expected_counts.items()}


def dataset_tables(config: ValidateConfig, path: Path) -> list[Table]:
    """Three tables: per beat, per dataset (shape and class counts), per record of the manifest."""
    gxe = _gx().expectations
    try:
        ds = artifact.load(path)
        manifest = artifact.read_manifest(path)
    except (DatasetError, OSError, ValueError) as err:
        return [Table("beats", "beat", None, error=f"dataset cannot be loaded: {err}")]
    beats = beat_frame(ds)
    beat_checks = [
        Check("at least one beat", gxe.ExpectTableRowCountToBeBetween(min_value=1), ()),
        Check("no NaN/inf", gxe.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]), ("finite",)),
        Check("beat minimum is -1 (within quantisation)",
              gxe.ExpectColumnValuesToBeBetween(column="min", min_value=-1 - QUANT, max_value=-1 + QUANT), ("min",)),
        Check("beat maximum is 1 (within quantisation)",
              gxe.ExpectColumnValuesToBeBetween(column="max", min_value=1 - QUANT, max_value=1 + QUANT), ("max",)),
        Check(f"label in {', '.join(artifact.CLASSES)}",
              gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(artifact.CLASSES)), ("label",)),
    ]
    if ds.leads > 1:
        beat_checks[3:3] = [
            Check("every lead reaches -1", gxe.ExpectColumnValuesToBeBetween(
                column="lead_min", max_value=-1 + QUANT), ("lead_min",)),
            Check("every lead reaches 1", gxe.ExpectColumnValuesToBeBetween(
                column="lead_max", min_value=1 - QUANT), ("lead_max",)),
        ]
    # unknown labels are left out of the counts; the label check names them
    valid = ds.labels[(ds.labels >= 0) & (ds.labels < len(artifact.CLASSES))].astype(np.int64)
    counts = {c: int(n) for c, n in zip(artifact.CLASSES, np.bincount(valid, minlength=len(artifact.CLASSES)))}
    row: dict[str, Any] = {"length": ds.length, "leads": ds.leads, "dtype": str(ds.beats.dtype), "n_beats": len(ds)}
    row.update({f"count_{c}": n for c, n in counts.items()})
    row["count_anomalous"] = sum(n for c, n in counts.items() if c != "N")
    dataset_checks = [
        Check(f"window length == {config.beat_length}", gxe.ExpectColumnValuesToBeInSet(
            column="length", value_set=[config.beat_length]), ("length",)),
        Check("beats stored as int16", gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["int16"]), ("dtype",)),
    ]
    for c, (low, high) in count_bounds(config).items():
        bound = f">= {low}" if high is None else f"within [{low}, {high}]"
        dataset_checks.append(Check(f"count of {c} {bound}", gxe.ExpectColumnValuesToBeBetween(
            column=f"count_{c}", min_value=low, max_value=high), (f"count_{c}",)))
    if config.expected_counts is None:
        dataset_checks.append(Check("at least one anomalous beat (S, V, F or Q)", gxe.ExpectColumnValuesToBeBetween(
            column="count_anomalous", min_value=1), ("count_anomalous",)))
    tables = [
        Table("beats", "beat", beats, beat_checks, ("record", "sample")),
        Table("dataset", "dataset", pd.DataFrame([row]), dataset_checks, ()),
    ]
    listed = manifest_records(manifest)
    if listed is None:
        tables.append(Table("dataset_records", "record", None,
                            error=f"{path / 'manifest.json'} lists no records (no 'records' key)"))
        return tables
    found, n = np.unique(ds.records, return_counts=True)
    per_record = dict.fromkeys(listed, 0) | {str(r): int(k) for r, k in zip(found, n)}
    listed_set = set(listed)
    rec = pd.DataFrame({"record": list(per_record), "n_beats": list(per_record.values()),
                        "in_manifest": [r in listed_set for r in per_record]})
    tables.append(Table("dataset_records", "record", rec, [
        Check("every manifest record has beats", gxe.ExpectColumnValuesToBeBetween(column="n_beats", min_value=1),
              ("n_beats",)),
        Check("no beats from records outside the manifest",
              gxe.ExpectColumnValuesToBeInSet(column="in_manifest", value_set=[True]), ("n_beats",)),
    ], ("record",)))
    return tables


# ---------------------------------------------------------------- running suites


def _gx():
    import great_expectations as gx

    return gx


@contextlib.contextmanager
def _quiet_gx() -> Iterator[None]:
    """GX logs its own bookkeeping (import, data sources) at INFO: hold it at WARNING meanwhile."""
    gx_log = logging.getLogger("great_expectations")
    level = gx_log.level
    gx_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        gx_log.setLevel(level)


def _context():
    """An in-memory GX context with usage statistics and progress bars off."""
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig)

    cfg = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                            progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False))
    return gx.get_context(project_config=cfg, mode="ephemeral")


def _plain(v: Any) -> Any:
    """JSON-safe version of a value from pandas/numpy/GX."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


def _observed(df: pd.DataFrame, column: str) -> Any:
    """What the column holds: its value (one row), its range (numbers) or its commonest values."""
    s = df[column]
    if len(s) == 1:
        return _plain(s.iloc[0])
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        s = s.dropna()
        return {"min": _plain(s.min()), "max": _plain(s.max())} if len(s) else None
    counts = s.astype("object").where(s.notna(), None).value_counts(dropna=False).head(8)
    return {"null" if k is None else str(k): int(v) for k, v in counts.items()}


def run_table(ctx: Any, table: Table) -> dict[str, Any]:
    """Validate one table with its own suite; a table that could not be built is a failed suite."""
    if table.frame is None:
        return {"suite": table.suite, "success": False, "rows": 0, "row_kind": table.what,
                "error": table.error, "expectations": []}
    gx = _gx()
    asset = ctx.data_sources.add_pandas(table.suite).add_dataframe_asset(table.suite)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": table.frame})
    suite = gx.ExpectationSuite(name=table.suite)
    for check in table.checks:
        suite.add_expectation(check.expectation)
    fmt = {"result_format": "SUMMARY", "partial_unexpected_count": 20 if table.what == "beat" else 200}
    if table.index:
        fmt["unexpected_index_column_names"] = list(table.index)
    result = batch.validate(suite, result_format=fmt)
    out = []
    for check, res in zip(table.checks, result.results):
        d = res.to_json_dict()
        cfg = d["expectation_config"]
        kwargs = {k: v for k, v in cfg["kwargs"].items() if k != "batch_id"}
        r = d.get("result") or {}
        column = kwargs.get("column") or kwargs.get("column_A")
        offending = _offending(table, check, r.get("partial_unexpected_index_list") or [])
        entry = {
            "name": check.name,
            "type": cfg["type"],
            "kwargs": _plain(kwargs),
            "success": bool(d["success"]),
            "checked": r.get("element_count", len(table.frame)),
            "unexpected_count": r.get("unexpected_count", 0),
            "observed": _plain(r["observed_value"]) if "observed_value" in r else (
                _observed(table.frame, column) if column else None),
            "offending": offending,
        }
        message = _exception(d.get("exception_info"))
        if message:
            entry["error"] = message
            entry["success"] = False
        out.append(entry)
    return {"suite": table.suite, "success": all(e["success"] for e in out), "rows": len(table.frame),
            "row_kind": table.what, "error": None, "expectations": out}


def _exception(info: Any) -> str | None:
    """The message of an exception GX caught while evaluating an expectation (flat or per metric)."""
    if not isinstance(info, dict):
        return None
    if "raised_exception" in info:
        return (info.get("exception_message") or "unknown error") if info["raised_exception"] else None
    found = [m for m in map(_exception, info.values()) if m]
    return "; ".join(found) or None


def _offending(table: Table, check: Check, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The offending rows GX names, by their index columns plus the values that explain the failure."""
    index = list(table.index)
    if not rows:
        return []
    if not index:  # GX then names rows by their position
        picked = table.frame.loc[[r for r in rows if isinstance(r, (int, np.integer))], list(check.columns)]
        return [{k: _plain(v) for k, v in row.items()} for row in picked.astype(object).to_dict("records")]
    found = pd.DataFrame(rows)[index]
    cols = index + [c for c in check.columns if c not in index]
    lookup = table.frame[cols].drop_duplicates(subset=index)
    for c in index:  # GX hands values back as JSON-ish types; align them with the frame's
        found[c] = found[c].astype(lookup[c].dtype)
    merged = found.merge(lookup, on=index, how="left")
    return [{k: _plain(v) for k, v in row.items()} for row in merged.astype(object).to_dict("records")]


def _who(row: dict[str, Any], index: Sequence[str]) -> str:
    ident = " ".join(f"{k} {row[k]}" for k in index if k in row)
    rest = ", ".join(f"{k}={row[k]}" for k in row if k not in index)
    return f"{ident} ({rest})" if ident and rest else ident or rest


def summarize(suites: list[dict[str, Any]], index: dict[str, tuple[str, ...]]) -> str:
    """A few readable lines: one per failed expectation with its offending records/values."""
    lines = []
    for s in suites:
        if s["error"]:
            lines.append(f"{s['suite']}: {s['error']}")
        for e in s["expectations"]:
            if e["success"]:
                continue
            if e.get("error"):
                lines.append(f"{s['suite']}: {e['name']}: could not be evaluated: {e['error']}")
                continue
            who = [_who(row, index[s["suite"]]) for row in e["offending"][:SHOWN]]
            more = e["unexpected_count"] - len(who)
            tail = f"; and {more} more" if more > 0 else ""
            if s["rows"] == 1 or not who:
                lines.append(f"{s['suite']}: {e['name']}: failed, observed {e['observed']}")
            else:
                lines.append(f"{s['suite']}: {e['name']}: {e['unexpected_count']} of {e['checked']} "
                             f"{s['row_kind']}s fail: {'; '.join(who)}{tail}")
    total = sum(len(s["expectations"]) for s in suites)
    passed = sum(e["success"] for s in suites for e in s["expectations"])
    head = f"{passed} of {total} expectations passed"
    return head + (" (all)" if not lines else "") + "".join(f"\n- {line}" for line in lines)


def render_html(result: dict[str, Any]) -> str:
    """A self-contained page: per suite a table of expectations, pass/fail, observed values, offenders."""
    esc = html.escape

    def cell(v: Any) -> str:
        return esc(v if isinstance(v, str) else json.dumps(v))

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>SI-BeatGAN validation</title><style>",
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}",
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top;font-size:90%}",
        ".pass{background:#e3f6e3}.fail{background:#fbe0e0}pre{white-space:pre-wrap}</style></head><body>",
        f"<h1>Validation: {'PASSED' if result['success'] else 'FAILED'}</h1>",
        f"<pre>{esc(result['summary'])}</pre>",
        f"<p>raw: {esc(str(result['inputs']['raw']))}<br>dataset: {esc(str(result['inputs']['dataset']))}</p>",
    ]
    for s in result["suites"]:
        status = "pass" if s["success"] else "fail"
        parts.append(f"<h2 class='{status}'>{esc(s['suite'])}: {status.upper()} ({s['rows']} {esc(s['row_kind'])} rows)</h2>")
        if s["error"]:
            parts.append(f"<p class='fail'>{esc(s['error'])}</p>")
            continue
        parts.append("<table><tr><th>expectation</th><th>GX type</th><th>result</th><th>unexpected</th>"
                     "<th>observed</th><th>offending rows</th></tr>")
        for e in s["expectations"]:
            ok = "pass" if e["success"] else "fail"
            offenders = "<br>".join(esc(_who(r, ())) for r in e["offending"][:50])
            parts.append(
                f"<tr class='{ok}'><td>{esc(e['name'])}</td><td>{esc(e['type'])}</td><td>{ok.upper()}</td>"
                f"<td>{e['unexpected_count']} of {e['checked']}</td><td>{cell(e['observed'])}</td>"
                f"<td>{offenders}{esc(' ' + e['error']) if e.get('error') else ''}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def run_validate(config: ValidateConfig, raw: Path | None, dataset: Path | None, out: Path,
                 records: Sequence[str] | None = None, progress: bool = False) -> dict[str, Any]:
    """Validate a WFDB folder (`records` of it, default config.records) and/or a beat dataset; write the reports.

    Raises ValidationFailed, after writing out/validation.json and out/validation.html, when any
    expectation fails or an input cannot be read.
    """
    if raw is None and dataset is None:
        raise ConfigError("run_validate: give a raw WFDB folder, a dataset folder or both")
    count_bounds(config)  # a bad config is refused before anything is read or written
    records = tuple(records if records is not None else config.records)
    names = None if records == ("all",) else records
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet_gx():
        tables: list[Table] = []
        if raw is not None:
            tables += record_tables(config, Path(raw), names, progress)
        if dataset is not None:
            tables += dataset_tables(config, Path(dataset))
        ctx = _context()
        suites = [run_table(ctx, table) for table in tables]
    for s in suites:
        failed = [e["name"] for e in s["expectations"] if not e["success"]]
        log.info("validate %s: %d %s rows, %s", s["suite"], s["rows"], s["row_kind"],
                 "passed" if s["success"] else f"FAILED: {s['error'] or ', '.join(failed)}")
    summary = summarize(suites, {t.suite: t.index for t in tables})
    result = {
        "success": all(s["success"] for s in suites),
        "summary": summary,
        "inputs": {"raw": str(raw) if raw is not None else None, "dataset": str(dataset) if dataset is not None else None,
                   "records": list(records)},
        "config": to_dict(config),
        "suites": suites,
    }
    write_text(out / "validation.json", json.dumps(_plain(result), indent=2) + "\n")
    write_text(out / "validation.html", render_html(result))
    if not result["success"]:
        raise ValidationFailed(summary)
    return result

