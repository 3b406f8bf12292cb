"""Register the winning model (alias `staging`) and promote it through a gate (alias `production`).

`run_register` logs the pyfunc model, the evaluation (figures, plots, and the test scores with their beat
index, labels and records) and the lineage (dataset and split hashes) to a run, registers a version with
tags and gives it `staging`. `promote` moves an alias only if the candidate is not worse than the version it
replaces on the same evaluation beats (a record-level paired bootstrap on the stored scores, so nothing is
re-scored); the replaced version gets `previous`, `rollback` restores it. Each move takes a generation lock
(creating a registered model of that name is atomic on the server): of two racing promotions one wins and the
other is refused; every move is recorded on the versions as tags (when, who, from, to, figures).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sibeatgan.errors import SibeatganError

log = logging.getLogger(__name__)

GENERATION_TAG = "sibeatgan.promotion_generation"
SCORES_ARTIFACT = "evaluation/scores.npz"


class RegistryError(SibeatganError):
    """Registration or promotion failed (server, upload, permission, or beats that cannot be compared)."""


class PromotionRefused(RegistryError):
    """The gate said no, or another promotion won the race; nothing was moved."""


def _client(uri: str | None = None) -> Any:
    from mlflow import MlflowClient

    from sibeatgan.tracking import client_env, ensure_store, tracking_uri

    client_env()
    uri = ensure_store(uri or tracking_uri())
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _who() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser()


def validation_threshold(generator: Path, dataset: Path, ds: Any, split: Path | None = None) -> float:
    """For generator files without a threshold: the model's own threshold policy on its validation beats from the split
    artifact, never the test split."""
    from sibeatgan.card import ThresholdPolicy, card_of
    from sibeatgan.data.splits import resolve_split
    from sibeatgan.modelio import load_score

    anomaly, meta = load_score(generator, "cpu")
    card = card_of(meta)
    part = resolve_split(dataset, split, ds.content_hash()).fold(card.protocol, card.fold)
    policy = card.threshold_policy or ThresholdPolicy.for_selection(card.selection)
    value = policy.choose(anomaly(ds.float_beats(part.val), 4096, "cpu"), ds.labels[part.val])
    if value is None:
        raise RegistryError(f"{generator}: no threshold can be chosen on its validation beats by the {policy.rule!r} rule")
    return value


def run_register(config: Any, generator: Path, evaluation: Path, dataset: Path, out: Path, fold: int | None = None,
                 validation: Path | None = None, threshold: float | None = None, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Log and register the model of `generator` with its evaluation (folder of `sibeatgan evaluate`); alias `staging`.

    Everything is written under `out` first (model, scores, lineage, model card), then uploaded; an upload that fails
    after the retries is a RegistryError naming the local copy. `validation`: validation.json of the validate gate.
    `evidence`: how this model won (the protocol's `choose_winner`: the candidates, the validation figures, the margin,
    the comparison table), written into the version's tags and description in words a reviewer reads at a glance.
    """
    from sibeatgan import pyfunc, tracking
    from sibeatgan.card import card_of
    from sibeatgan.data.artifact import load, read_manifest
    from sibeatgan.files import write_json
    from sibeatgan.modelio import load_generator

    out, evaluation, dataset = Path(out), Path(evaluation), Path(dataset)
    report = json.loads((evaluation / "evaluation.json").read_text())
    gen, meta = load_generator(generator, "cpu")
    card = card_of(meta)
    folds = report["folds"]
    key = str(fold) if fold is not None else (str(card.fold) if len(folds) > 1 else next(iter(folds)))
    if key not in folds:
        raise RegistryError(f"{evaluation}: no evaluation of fold {key} (it has {', '.join(folds)})")
    figures = folds[key]
    own = card.score.get("kind", "reconstruction")
    if figures.get("score", "reconstruction") != own:
        raise RegistryError(f"{evaluation}: fold {key} was evaluated with the {figures.get('score')} score, but {generator} scores by "
                            f"{own}; register it with an evaluation of its own score (evaluate without --set score=...)")
    ds = load(dataset)
    if report.get("dataset_hash") != ds.content_hash():
        raise RegistryError(f"{evaluation} was computed on dataset {str(report.get('dataset_hash'))[:12]}, not {dataset}")
    try:
        card.check(ds.content_hash(), report.get("split_hash"), int(key), figures.get("split", card.protocol), what=str(generator))
    except SibeatganError as err:
        raise RegistryError(f"{err}; its evaluation {evaluation} does not belong to it") from None
    out.mkdir(parents=True, exist_ok=True)
    with np.load(evaluation / f"fold_{key}" / "scores.npz") as npz:
        index, scores, labels = npz["index"], npz["scores"], npz["labels"]
    protocol, split_hash = card.protocol, card.split_hash
    records = ds.records[index]
    with open(out / "scores.npz", "wb") as fh:
        np.savez_compressed(fh, index=index, scores=scores, labels=labels, records=records)
    valid = "unknown"
    if validation is not None:
        valid = "passed" if json.loads(Path(validation).read_text()).get("success") else "failed"
    lineage = {"dataset_hash": ds.content_hash(), "split_hash": split_hash, "protocol": protocol, "fold": key, "validation": valid}
    write_json(out / "lineage.json", lineage)
    card.write(out)
    thr = threshold if threshold is not None else card.threshold
    if thr is None:
        thr = validation_threshold(generator, dataset, ds)
    operating = figures.get("operating") or {}
    # F1 at the threshold chosen without test labels; the best F1 over test thresholds is the oracle, labelled so
    numbers = {"auc": figures.get("auc"), "ap": figures.get("ap"), "f1": operating.get("f1"), "f1_oracle": figures.get("f1_oracle")}
    numbers = {k: float(v) for k, v in numbers.items() if v is not None}
    for k in ("auc", "ap"):
        if f"{k}_ci" in figures:
            numbers[f"{k}_ci_low"], numbers[f"{k}_ci_high"] = figures[f"{k}_ci"]
    verdict = _verdict(card.kind, evidence)
    if evidence:
        write_json(out / "evidence.json", evidence)
    tracker = tracking.step_tracker(config, out, "register", run_name=f"register-{card.kind}",
                                    tags={"protocol": protocol, "kind": card.kind, "winner": card.kind, "verdict": verdict})
    tracker.log_dataset(ds.content_hash(), split_hash, source=str(dataset.resolve()), context="evaluation")
    tracker.log_metrics(numbers)
    if evidence and evidence.get("margin") is not None:
        tracker.log_metrics({"winner_margin": evidence["margin"]})
    pyfunc.log_model(tracker, generator, read_manifest(dataset).get("config") or {}, out / "model", threshold=thr)
    for f in ("scores.npz", "lineage.json", "model_card.json", "evidence.json"):
        if (out / f).exists():
            tracker.log_artifact(out / f, "evaluation")
    tracker.log_artifact(evaluation / "evaluation.json", "evaluation")
    if evidence and evidence.get("table") and Path(evidence["table"]).is_file():
        tracker.log_artifact(Path(evidence["table"]), "evaluation")
    for png in sorted((evaluation / f"fold_{key}").glob("*.png")):
        tracker.log_artifact(png, "plots")
    tracker.log_artifact(tracking.plot_reconstructions(gen, ds.float_beats(index), labels, scores, out / "reconstructions.png"), "plots")
    tracker.log_artifact(dataset / "manifest.json", "dataset")
    if validation is not None:
        for f in sorted(Path(validation).parent.glob("validation.*")):
            tracker.log_artifact(f, "validation")
    if not tracker.finish():
        raise RegistryError(f"the model could not be uploaded to {tracker.uri} after {tracker.retries + 1} tries; "
                            f"the local copy is in {out} (journal {tracker.journal}); retry with `sibeatgan track-sync {tracker.dir}`")
    client = _client(tracker.uri)
    name = config.model_name
    try:
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name, description="SI-BeatGAN ECG beat anomaly detector (pyfunc: raw ECG or beat windows)")
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
                raise
        source = client.get_run(tracker.run_id).info.artifact_uri.rstrip("/") + "/model"
        tags = {"protocol": protocol, "dataset_hash": lineage["dataset_hash"], "split_hash": split_hash, "validation": valid,
                "fold": key, "kind": card.kind, "winner": card.kind, "verdict": verdict, "threshold": str(thr),
                "threshold_rule": card.threshold_policy.rule if card.threshold_policy else "unknown", "scores": SCORES_ARTIFACT,
                **{k: f"{v:.4f}" for k, v in numbers.items() if k in ("auc", "ap", "f1", "f1_oracle")},
                **{f"{k}_ci": "[{:.4f}, {:.4f}]".format(*figures[f"{k}_ci"]) for k in ("auc", "ap") if f"{k}_ci" in figures}}
        if evidence:
            tags.update({"candidates": ",".join(evidence.get("candidates", [])), "selection_criterion": str(evidence.get("criterion")),
                         "margin": f"{evidence['margin']:.4g}" if evidence.get("margin") is not None else "n/a"})
        mv = client.create_model_version(name, source, run_id=tracker.run_id, tags=tags,
                                         description=f"{verdict} Test AUC {figures.get('auc', float('nan')):.4f} on {protocol} fold {key}; "
                                                     f"F1 {numbers.get('f1', float('nan')):.4f} at the validation threshold. {card.summary()}.")
        client.set_registered_model_alias(name, "staging", mv.version)
    except Exception as err:
        raise RegistryError(f"registering {name} at {tracker.uri} failed ({type(err).__name__}: {err}); the model is logged in run "
                            f"{tracker.run_id} and kept in {out}") from None
    result = {"name": name, "version": int(mv.version), "run_id": tracker.run_id, "model_uri": f"models:/{name}@staging", **lineage,
              **numbers, "kind": card.kind, "verdict": verdict}
    write_json(out / "register.json", result)
    log.info("registered %s version %s (alias staging): %s AUC %s", name, mv.version, verdict, tags.get("auc"))
    return result


def _verdict(kind: str, evidence: dict[str, Any] | None) -> str:
    """The registration's headline in words: which model won, over what, by how much, on what."""
    if not evidence:
        return f"The {kind} is registered (no comparison was made)."
    others = [c for c in evidence.get("candidates", []) if c != kind]
    if not others:
        return f"The {kind} is registered (the only candidate)."
    margin = evidence.get("margin")
    by = f" by {margin:.4g}" if margin is not None else ""
    why = f" {evidence['reason']}" if evidence.get("reason") else ""
    test = evidence.get("test_comparison") or {}
    if test.get("delta_auc") is not None:
        ci = test.get("delta_auc_ci")
        p = test.get("p_auc")
        why += (f" On test beats, student - control AUC {test['delta_auc']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
                + (f", p {p:.3f}" if p is not None else "") + ".")
    return f"The {kind} won over the {', '.join(others)}{by} on validation ({evidence.get('criterion')}).{why}"


def _scores(client: Any, mv: Any, tmp: str) -> dict[str, np.ndarray]:
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=SCORES_ARTIFACT, dst_path=tmp,
                                               tracking_uri=client._tracking_client.tracking_uri)
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _figures(mv: Any) -> str:
    t = mv.tags
    return f"version {mv.version}: AUC {t.get('auc', '?')} {t.get('auc_ci', '')}, AP {t.get('ap', '?')} {t.get('ap_ci', '')}"


def _get_alias(client: Any, name: str, alias: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "INVALID_PARAMETER_VALUE" in str(err.error_code):
            return None
        raise


def gate(client: Any, candidate: Any, current: Any, n_bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of candidate (b) against current (a) on their stored test scores; `worse` decides."""
    for tag in ("dataset_hash", "split_hash"):
        if candidate.tags.get(tag) != current.tags.get(tag):
            raise PromotionRefused(f"version {candidate.version} and version {current.version} were evaluated on different beats "
                                   f"({tag} {str(candidate.tags.get(tag))[:12]} vs {str(current.tags.get(tag))[:12]}); they cannot be compared")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = _scores(client, current, tmp + "/a"), _scores(client, candidate, tmp + "/b")
    if not np.array_equal(a["index"], b["index"]) or not np.array_equal(a["labels"], b["labels"]):
        raise PromotionRefused(f"versions {current.version} and {candidate.version} stored scores of different test beats")
    from sibeatgan.metrics import paired_compare

    cmp = paired_compare(a["scores"], b["scores"], a["labels"], a["records"], n_bootstrap=n_bootstrap, seed=seed)
    cmp["worse"] = bool(cmp["delta_auc"] < 0 and cmp["p_auc"] < alpha)
    cmp["alpha"] = alpha
    return cmp


def _lock(client: Any, name: str, alias: str, generation: int, record: dict[str, Any]) -> str:
    """Take generation `generation` of `name@alias`: creating a registered model is atomic, so one racer wins."""
    from mlflow.exceptions import MlflowException

    lock = f"{name}.promotions.{alias}.{generation}"
    try:
        client.create_registered_model(lock, tags={"sibeatgan.lock": "true"}, description=json.dumps(record))
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" in str(err.error_code):
            raise PromotionRefused(f"another promotion of {name}@{alias} won (generation {generation}); nothing was moved") from None
        raise
    return lock


def _move(client: Any, name: str, alias: str, generation: int, record: dict[str, Any], aliases: dict[str, Any],
          tag_versions: dict[Any, str], expected: Any) -> None:
    """Commit a move under its generation lock: re-check the alias, set aliases, record on the versions, and bump
    the generation last (so whoever reads the new generation also sees the moved aliases). On any failure the
    lock is released (a user without permission gets a clear RegistryError)."""
    from mlflow.exceptions import MlflowException

    lock = _lock(client, name, alias, generation, record)
    try:
        now = _get_alias(client, name, alias)
        if (now.version if now else None) != (expected.version if expected else None):
            raise PromotionRefused(f"{name}@{alias} moved to version {now.version if now else None} meanwhile; nothing was moved")
        for target, version in aliases.items():
            if version is not None:
                client.set_registered_model_alias(name, target, version)
        text = json.dumps(record, sort_keys=True)
        for version, key in tag_versions.items():
            if version is not None:
                client.set_model_version_tag(name, version, f"{key}.{generation}", text)
        client.set_registered_model_tag(name, GENERATION_TAG, str(generation))
    except BaseException as err:
        try:
            client.delete_registered_model(lock)
        except Exception as cleanup:  # noqa: BLE001 - report the first error; name the stale lock
            log.error("could not release %s (%s): delete it if no promotion is running", lock, cleanup)
        if isinstance(err, MlflowException) and ("PERMISSION_DENIED" in str(err.error_code) or err.get_http_status_code() in (401, 403)):
            raise RegistryError(f"user {_who()!r} may not move {name}@{alias} (needs EDIT or MANAGE on the registered model)") from None
        raise


def promote(name: str, from_alias: str = "staging", to_alias: str = "production", uri: str | None = None, n_bootstrap: int = 1000,
            alpha: float = 0.05, seed: int = 0, on_decided: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Move `to_alias` to the version at `from_alias` if it is not worse than the version there now (or there is none).
    The replaced version gets alias `previous`. Raises PromotionRefused with both sets of figures otherwise."""
    client = _client(uri)
    candidate = _get_alias(client, name, from_alias)
    if candidate is None:
        raise RegistryError(f"{name} has no version with alias {from_alias!r}")
    generation = int(client.get_registered_model(name).tags.get(GENERATION_TAG, "0"))
    current = _get_alias(client, name, to_alias)
    if current is not None and current.version == candidate.version:
        return {"name": name, "version": int(candidate.version), "moved": False, "reason": f"already {to_alias}"}
    record: dict[str, Any] = {"action": "promote", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": _who(),
                              "from": from_alias, "to": to_alias, "version": int(candidate.version),
                              "replaced": int(current.version) if current is not None else None,
                              "candidate": _figures(candidate), "current": _figures(current) if current is not None else None}
    if current is not None:
        cmp = gate(client, candidate, current, n_bootstrap, alpha, seed)
        record["comparison"] = {k: cmp[k] for k in ("auc_a", "auc_b", "delta_auc", "delta_auc_ci", "p_auc", "ap_a", "ap_b",
                                                    "delta_ap", "delta_ap_ci", "p_ap", "n", "n_groups")}
        if cmp["worse"]:
            raise PromotionRefused(
                f"refused: version {candidate.version} ({from_alias}) is worse than version {current.version} ({to_alias}) on the same "
                f"{cmp['n']} beats of {cmp['n_groups']} records:\n  {to_alias}: {_figures(current)}\n  {from_alias}: {_figures(candidate)}\n"
                f"  paired: delta AUC {cmp['delta_auc']:+.4f} [{cmp['delta_auc_ci'][0]:+.4f}, {cmp['delta_auc_ci'][1]:+.4f}] "
                f"p {cmp['p_auc']:.3g}; delta AP {cmp['delta_ap']:+.4f} p {cmp['p_ap']:.3g}")
    if on_decided is not None:
        on_decided(record)
    _move(client, name, to_alias, generation + 1, record, {"previous": current.version if current else None, to_alias: candidate.version},
          {candidate.version: "promotion", current.version if current else None: "replaced"}, current)
    log.info("%s version %s is now %s%s", name, candidate.version, to_alias, f" (was version {current.version})" if current else "")
    return {**record, "moved": True, "generation": generation + 1}


def rollback(name: str, alias: str = "production", uri: str | None = None) -> dict[str, Any]:
    """Give `alias` back to the version at `previous`; the version rolled back from becomes `previous`."""
    client = _client(uri)
    generation = int(client.get_registered_model(name).tags.get(GENERATION_TAG, "0"))
    current, previous = _get_alias(client, name, alias), _get_alias(client, name, "previous")
    if previous is None:
        raise RegistryError(f"{name} has no version with alias 'previous' to roll back to")
    record = {"action": "rollback", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "who": _who(), "from": "previous",
              "to": alias, "version": int(previous.version), "replaced": int(current.version) if current else None,
              "candidate": _figures(previous), "current": _figures(current) if current else None}
    _move(client, name, alias, generation + 1, record, {alias: previous.version, "previous": current.version if current else None},
          {previous.version: "rollback", current.version if current else None: "rolled_back"}, current)
    log.info("%s@%s rolled back to version %s", name, alias, previous.version)
    return {**record, "moved": True, "generation": generation + 1}


def history(name: str, uri: str | None = None) -> list[dict[str, Any]]:
    """Every recorded move of `name` (from the version tags), oldest first."""
    client = _client(uri)
    out = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        for key, value in mv.tags.items():
            if key.split(".")[0] in ("promotion", "rollback"):
                out.append({"generation": int(key.rsplit(".", 1)[1]), **json.loads(value)})
    return sorted(out, key=lambda r: r["generation"])
