"""Register the winning model (alias `staging`) and promote it through a gate (alias `production`).

`run_register` logs the pyfunc model, the evaluation (figures, plots, and the test scores with their beat
index, labels and records) and the lineage (dataset and split hashes) to a run, registers a version with
tags and gives it `staging`. `promote` moves an alias only if the candidate is not worse than the version it
replaces by more than a margin (non-inferiority: the lower end of a record-level paired bootstrap interval of delta
AUC on the stored scores of the same beats, so nothing is re-scored), with enough records and beats to tell; the
replaced version gets `previous`, `rollback` restores it through the same gate. The lock, the intent of a move and
the audit trail are tags of the registered model and its versions (writable only with EDIT on it); the lock expires,
and a move killed half-way is completed by the next promote or rollback (see the promotion section below).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import tempfile
import time
import uuid
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


# --- promotion: the gate, the lock and the crash-safe move (all state lives on the registered model) ---
#
# Everything a promotion writes is a tag or an alias of the registered model `name` or of its versions, so only an
# account with EDIT on that model can write it (or block it): the lock `sibeatgan.lock.<alias>`, the intent
# `sibeatgan.intent.<alias>` (the whole move, written before any alias moves), the generation counter, and the audit
# record of each move on the versions it touched. A move is: take the lock, write the intent, move `previous`, move
# the alias, write the audit tags, bump the generation, delete the intent, release the lock. A command killed anywhere
# in between leaves the intent; the next `promote` or rollback completes it first (the intent holds every write).

LOCK_TAG = "sibeatgan.lock.{alias}"
INTENT_TAG = "sibeatgan.intent.{alias}"
MOVE_KEYS = ("promotion", "replaced", "rollback", "rolled_back")  # audit tag keys on versions: "<key>.<generation>"


class PromotionBusy(PromotionRefused):
    """Another promotion of the same alias holds the lock (or won the race for it); nothing was moved, retry later."""


class RegistryUsageError(RegistryError):
    """The command named something that is not there (a model, an alias) or asked for something inconsistent."""


def _at(point: str) -> None:
    """Called after each write of a move (a test seam: tests kill the process here to check recovery)."""


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


def _version(mv: Any) -> int | None:
    return int(mv.version) if mv is not None else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def gate(client: Any, candidate: Any, current: Any, n_bootstrap: int = 1000, margin: float = 0.005, seed: int = 0,
         min_records: int = 5, min_beats: int = 500, ci: float = 0.95) -> dict[str, Any]:
    """Non-inferiority of candidate (b) against current (a) on their stored test scores of the same beats.

    `passed` only when the lower end of the record-level paired bootstrap interval (`ci`, two-sided) of
    delta AUC = candidate - current is above -`margin`, with at least `min_records` records and `min_beats` beats of
    both classes; `reason` says why not. Beats that differ between the two versions raise PromotionRefused."""
    from sibeatgan.metrics import paired_compare as compare

    for tag in ("dataset_hash", "split_hash"):
        if candidate.tags.get(tag) != current.tags.get(tag):
            raise PromotionRefused(f"version {candidate.version} and version {current.version} were evaluated on different beats "
                                   f"({tag} {str(candidate.tags.get(tag))[:12]} vs {str(current.tags.get(tag))[:12]}); "
                                   "they cannot be compared")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = _scores(client, current, tmp + "/a"), _scores(client, candidate, tmp + "/b")
    if not np.array_equal(a["index"], b["index"]) or not np.array_equal(a["labels"], b["labels"]):
        raise PromotionRefused(f"versions {current.version} and {candidate.version} stored scores of different test beats")
    labels, records = a["labels"] != 0, a["records"]
    n_records, n_anomalous = int(np.unique(records).size), int(labels.sum())
    out: dict[str, Any] = {"margin": margin, "ci": ci, "min_records": min_records, "min_beats": min_beats, "n": int(labels.size),
                           "n_groups": n_records, "n_anomalous": n_anomalous}
    short = [f"{n_records} records (at least {min_records})" if n_records < min_records else "",
             f"{labels.size} beats (at least {min_beats})" if labels.size < min_beats else "",
             "no anomalous beat" if n_anomalous == 0 else "", "no normal beat" if n_anomalous == labels.size else ""]
    if any(short):
        return {**out, "passed": False, "reason": "too little evidence to compare: " + ", ".join(s for s in short if s)}
    cmp = compare(a["scores"], b["scores"], a["labels"], records, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
    out.update({k: cmp[k] for k in ("auc_a", "auc_b", "delta_auc", "delta_auc_ci", "p_auc", "ap_a", "ap_b", "delta_ap",
                                    "delta_ap_ci", "p_ap", "n", "n_groups")})
    low = cmp["delta_auc_ci"][0] if cmp["delta_auc_ci"] else float("nan")
    if not np.isfinite(low):
        return {**out, "passed": False, "reason": "the paired bootstrap gave no interval for delta AUC"}
    passed = bool(low > -margin)
    why = (f"the lower end of the {ci:.0%} interval of delta AUC ({low:+.4f}) is {'above' if passed else 'not above'} "
           f"-{margin:g}, the non-inferiority margin{'' if passed else ': it may be worse by more than the margin'}")
    return {**out, "passed": passed, "reason": why}


def _paired_text(cmp: dict[str, Any]) -> str:
    if "delta_auc" not in cmp:
        return ""
    lo, hi = cmp["delta_auc_ci"]
    return (f"\n  paired on {cmp['n']} beats of {cmp['n_groups']} records: delta AUC {cmp['delta_auc']:+.4f} [{lo:+.4f}, {hi:+.4f}], "
            f"delta AP {cmp['delta_ap']:+.4f}")


# --- the lock: a lease in a tag of the registered model, taken with Fischer's timed mutual exclusion ---

class _Lease:
    """The lock `sibeatgan.lock.<alias>` held by this process until `deadline` (monotonic). Every write of a move
    first checks that the lease is still ours and not about to expire, so a holder that was paused past its TTL
    stops instead of writing over the one that took over."""

    def __init__(self, client: Any, name: str, alias: str, token: str, deadline: float, settle_s: float) -> None:
        self.client, self.name, self.alias, self.token, self.deadline, self.settle_s = client, name, alias, token, deadline, settle_s
        self.key = LOCK_TAG.format(alias=alias)

    def check(self) -> None:
        if time.monotonic() > self.deadline - self.settle_s:
            raise PromotionBusy(f"the lock on {self.name}@{self.alias} expired during the move; the intent is kept and the next "
                                f"promote or rollback completes it")
        held = _parse(_model_tags(self.client, self.name).get(self.key))
        if held.get("token") != self.token:
            raise PromotionBusy(f"the lock on {self.name}@{self.alias} was taken over during the move; stopped")

    def release(self) -> None:
        try:
            if _parse(_model_tags(self.client, self.name).get(self.key)).get("token") == self.token:
                self.client.delete_registered_model_tag(self.name, self.key)
        except Exception as err:  # noqa: BLE001 - the lock expires on its own; say so and keep the first error
            log.warning("could not release the lock on %s@%s (%s); it expires on its own", self.name, self.alias, err)


def _model_tags(client: Any, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).tags)


def _parse(text: str | None) -> dict[str, Any]:
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}


def _live(lock: dict[str, Any]) -> bool:
    """A lock counts until it expires, unless its holder ran on this host and is gone."""
    if not lock:
        return False
    if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
        try:
            os.kill(lock["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return time.time() < float(lock.get("expires", 0))


def _duplicate_key(err: Exception) -> bool:
    """Whether a tag write failed because a concurrent writer inserted the same key first (PostgreSQL, MySQL, SQLite)."""
    text = str(err).lower()
    return any(m in text for m in ("uniqueviolation", "duplicate key", "unique constraint", "duplicate entry"))


def _describe(lock: dict[str, Any]) -> str:
    until = time.strftime("%H:%M:%SZ", time.gmtime(float(lock.get("expires", 0))))
    return f"held by {lock.get('who')!r} on {lock.get('host')} (pid {lock.get('pid')}) since {lock.get('since')}, expires {until}"


def _acquire(client: Any, name: str, alias: str, ttl_s: float, settle_s: float, tries: int = 3) -> _Lease:
    """Fischer's algorithm: see the lock free, write our token, wait `settle_s`, and hold it if the token is still ours.
    Safe when our read-to-write takes under settle_s (a competitor re-reads settle_s after its own write), which is
    checked with a 20% reserve: a slower try withdraws its token and tries again (up to `tries` times, then refuses)."""
    key = LOCK_TAG.format(alias=alias)
    for _ in range(tries):
        start = time.monotonic()
        held = _parse(_model_tags(client, name).get(key))
        if _live(held):
            raise PromotionBusy(f"another promotion of {name}@{alias} is in progress ({_describe(held)}); nothing was moved")
        token = uuid.uuid4().hex
        mine = {"token": token, "who": _who(), "host": socket.gethostname(), "pid": os.getpid(), "since": _now(),
                "expires": time.time() + ttl_s, "ttl_s": ttl_s}
        try:
            client.set_registered_model_tag(name, key, json.dumps(mine))
        except Exception as err:  # noqa: BLE001 - only a lost write race is turned into PromotionBusy
            if _duplicate_key(err):  # two writers inserted the tag at once; the store kept the other's
                raise PromotionBusy(f"another promotion of {name}@{alias} wrote the lock at the same moment and won it; "
                                    f"nothing was moved") from None
            raise
        lease = _Lease(client, name, alias, token, start + ttl_s, settle_s)
        if time.monotonic() - start <= 0.8 * settle_s:  # our read saw it free less than settle_s before our write took effect
            break
        lease.release()
        time.sleep(settle_s)
    else:
        raise PromotionBusy(f"the server took over {0.8 * settle_s:g} s to take the lock on {name}@{alias} {tries} times, too slow to be "
                            f"sure no other promotion took it too; nothing was moved, retry (or raise tracking.lock_settle_s)")
    time.sleep(settle_s)
    won = _parse(_model_tags(client, name).get(key))
    if won.get("token") != token:
        raise PromotionBusy(f"another promotion of {name}@{alias} won the lock ({_describe(won)}); nothing was moved")
    return lease


# --- the move: intent first, then each write; a half-done move is completed by whoever takes the lock next ---

def _apply(client: Any, lease: _Lease, plan: dict[str, Any]) -> None:
    """Make every write of `plan` (idempotent: a repeat writes the same values), bump the generation, drop the intent."""
    name = plan["name"]
    text = json.dumps(plan["record"], sort_keys=True)
    for alias, version in plan["aliases"]:
        lease.check()
        if version is None:
            if _get_alias(client, name, alias) is not None:
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, str(version))
        _at(f"alias:{alias}")
    for version, key in plan["audit"]:
        lease.check()
        client.set_model_version_tag(name, str(version), f"{key}.{plan['generation']}", text)
        _at(f"audit:{key}")
    lease.check()
    client.set_registered_model_tag(name, GENERATION_TAG, str(plan["generation"]))
    _at("generation")
    client.delete_registered_model_tag(name, INTENT_TAG.format(alias=plan["alias"]))
    _at("done")


def _complete(client: Any, lease: _Lease, name: str, alias: str) -> dict[str, Any] | None:
    """Under the lock: finish the move a killed command left as its intent (if any); returns its record."""
    tags = _model_tags(client, name)
    plan = _parse(tags.get(INTENT_TAG.format(alias=alias)))
    if not plan:
        return None
    if int(tags.get(GENERATION_TAG, "0")) < int(plan["generation"]):
        plan["record"]["completed"] = {"by": _who(), "when": _now()}
        _apply(client, lease, plan)
    else:  # it had committed; only the intent was left
        lease.check()
        client.delete_registered_model_tag(name, INTENT_TAG.format(alias=alias))
    log.warning("completed the interrupted %s of %s@%s to version %s (generation %s, by %s at %s)", plan["record"].get("action"),
                name, alias, plan["record"].get("version"), plan["generation"], plan["record"].get("who"), plan["record"].get("when"))
    return {**plan["record"], "generation": plan["generation"]}


def _recover(client: Any, name: str, alias: str, ttl_s: float, settle_s: float) -> dict[str, Any] | None:
    """Before deciding: refuse while a live promotion holds the lock; complete a killed one's intent."""
    tags = _model_tags(client, name)
    held = _parse(tags.get(LOCK_TAG.format(alias=alias)))
    if _live(held):
        raise PromotionBusy(f"another promotion of {name}@{alias} is in progress ({_describe(held)}); nothing was moved")
    if not tags.get(INTENT_TAG.format(alias=alias)):
        return None
    lease = _acquire(client, name, alias, ttl_s, settle_s)
    try:
        return _complete(client, lease, name, alias)
    finally:
        lease.release()


def _move(client: Any, name: str, alias: str, generation: int, expected: Any, aliases: list[tuple[str, int | None]],
          audit: list[tuple[int | None, str]], record: dict[str, Any], ttl_s: float, settle_s: float) -> dict[str, Any]:
    """Take the lock, re-read the generation and the alias (compare-and-set on what the decision saw), write the intent,
    then the move."""
    lease = _acquire(client, name, alias, ttl_s, settle_s)
    try:
        if _complete(client, lease, name, alias) is not None:
            raise PromotionBusy(f"{name}@{alias} had an interrupted move, now completed; nothing else was moved: run the command again")
        now_generation = int(_model_tags(client, name).get(GENERATION_TAG, "0"))
        now = _get_alias(client, name, alias)
        if now_generation != generation or _version(now) != _version(expected):
            raise PromotionBusy(f"{name}@{alias} moved meanwhile (generation {generation} -> {now_generation}, version "
                                f"{_version(expected)} -> {_version(now)}); nothing was moved: run the command again")
        plan = {"name": name, "alias": alias, "generation": generation + 1, "record": record,
                "aliases": [(a, v) for a, v in aliases], "audit": [(v, k) for v, k in audit if v is not None]}
        lease.check()
        client.set_registered_model_tag(name, INTENT_TAG.format(alias=alias), json.dumps(plan, sort_keys=True))
        _at("intent")
        _apply(client, lease, plan)
    finally:
        lease.release()
    return {**record, "moved": True, "generation": generation + 1}


def _errors(name: str, alias: str, uri: str | None) -> Any:
    """Server, credential and permission failures as one-line RegistryErrors (RegistryError itself passes through)."""
    import contextlib

    @contextlib.contextmanager
    def wrap() -> Any:
        from mlflow.exceptions import MlflowException

        try:
            yield
        except RegistryError:
            raise
        except MlflowException as err:
            raise _infra_error(err, name, alias, uri) from None
        except OSError as err:
            raise RegistryError(f"MLflow at {_uri(uri)} is unreachable ({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None

    return wrap()


def _uri(uri: str | None) -> str:
    import mlflow

    return uri or mlflow.get_tracking_uri()


def _infra_error(err: Any, name: str, alias: str, uri: str | None) -> RegistryError:
    text, code, status = str(err), str(getattr(err, "error_code", "")), None
    try:
        status = err.get_http_status_code()
    except Exception:  # noqa: BLE001 - older exceptions carry no status
        pass
    if "PERMISSION_DENIED" in code or status == 403 or "403 != 200" in text:
        return RegistryError(f"user {_who()!r} may not move {name}@{alias}: it needs EDIT on the registered model "
                             f"(only the promoting account has it; see README, 'Who may promote')")
    if "UNAUTHENTICATED" in code or status == 401 or "401 != 200" in text:
        return RegistryError(f"MLflow at {_uri(uri)} refused the credentials of user {_who()!r} (HTTP 401): check "
                             f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    if "RESOURCE_DOES_NOT_EXIST" in code:
        return RegistryUsageError(f"{_uri(uri)}: {text.splitlines()[0][:200]}")
    if any(s in text for s in ("Max retries exceeded", "Connection refused", "ConnectionError", "timed out", "Read timed out")):
        return RegistryError(f"MLflow at {_uri(uri)} is unreachable (connection refused or timed out)")
    return RegistryError(f"MLflow at {_uri(uri)} failed: {text.splitlines()[0][:200] if text else type(err).__name__}")


def promote(name: str, from_alias: str = "staging", to_alias: str = "production", uri: str | None = None, n_bootstrap: int = 1000,
            margin: float = 0.005, seed: int = 0, *, min_records: int = 5, min_beats: int = 500, force: bool = False,
            reason: str | None = None, lock_ttl_s: float = 120.0, lock_settle_s: float = 2.0,
            on_decided: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Move `to_alias` to the version at `from_alias` if it passes the non-inferiority gate against the version there now
    (or there is none); the replaced version gets alias `previous`. `force` (with a `reason`, recorded) skips the gate.
    Raises PromotionRefused (the gate, with both sets of figures), PromotionBusy (another promotion holds the lock),
    RegistryUsageError (no such model or alias) or RegistryError (server, credentials, permission)."""
    if force and not (reason or "").strip():
        raise RegistryUsageError("--force needs --reason: the reason is recorded in the audit trail")
    client = _client(uri)
    with _errors(name, to_alias, uri):
        recovered = _recover(client, name, to_alias, lock_ttl_s, lock_settle_s)
        candidate = _get_alias(client, name, from_alias)
        if candidate is None:
            raise RegistryUsageError(f"{name} has no version with alias {from_alias!r}")
        generation = int(_model_tags(client, name).get(GENERATION_TAG, "0"))
        current = _get_alias(client, name, to_alias)
        if current is not None and current.version == candidate.version:
            return {"name": name, "version": int(candidate.version), "moved": False, "reason": f"already {to_alias}",
                    "recovered": recovered}
        record = _record("promote", from_alias, to_alias, candidate, current, force, reason)
        _decide(client, record, candidate, current, f"version {candidate.version} ({from_alias})", n_bootstrap, margin, seed,
                min_records, min_beats, force)
        if on_decided is not None:
            on_decided(record)
        result = _move(client, name, to_alias, generation, current, [("previous", _version(current)), (to_alias, int(candidate.version))],
                       [(int(candidate.version), "promotion"), (_version(current), "replaced")], record, lock_ttl_s, lock_settle_s)
    log.info("%s version %s is now %s%s", name, candidate.version, to_alias, f" (was version {current.version})" if current else "")
    return {**result, "recovered": recovered}


def rollback(name: str, alias: str = "production", uri: str | None = None, n_bootstrap: int = 1000, margin: float = 0.005,
             seed: int = 0, *, min_records: int = 5, min_beats: int = 500, force: bool = False, reason: str | None = None,
             lock_ttl_s: float = 120.0, lock_settle_s: float = 2.0) -> dict[str, Any]:
    """Give `alias` back to the version at `previous` (which it restores is in `restores`), through the same gate as a
    promotion unless `force` (with a `reason`); the version rolled back from becomes `previous`."""
    if force and not (reason or "").strip():
        raise RegistryUsageError("--force needs --reason: the reason is recorded in the audit trail")
    client = _client(uri)
    with _errors(name, alias, uri):
        recovered = _recover(client, name, alias, lock_ttl_s, lock_settle_s)
        if recovered is not None and recovered.get("action") == "rollback":  # the rollback asked for was killed half-way: done now
            return {**recovered, "moved": True, "recovered": recovered,
                    "reason": "completed an interrupted rollback; nothing else moved (run again to roll back once more)"}
        generation = int(_model_tags(client, name).get(GENERATION_TAG, "0"))
        current, previous = _get_alias(client, name, alias), _get_alias(client, name, "previous")
        if previous is None:
            raise RegistryUsageError(f"{name} has no version with alias 'previous' to roll back to")
        record = _record("rollback", "previous", alias, previous, current, force, reason)
        record["restores"] = _figures(previous)
        if current is not None:
            _decide(client, record, previous, current, f"version {previous.version} (previous)", n_bootstrap, margin, seed,
                    min_records, min_beats, force)
        result = _move(client, name, alias, generation, current, [(alias, int(previous.version)), ("previous", _version(current))],
                       [(int(previous.version), "rollback"), (_version(current), "rolled_back")], record, lock_ttl_s, lock_settle_s)
    log.info("%s@%s rolled back to version %s (restores %s)", name, alias, previous.version, record["restores"])
    return {**result, "recovered": recovered}


def _record(action: str, source: str, target: str, candidate: Any, current: Any, force: bool, reason: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"action": action, "when": _now(), "who": _who(), "from": source, "to": target,
                              "version": int(candidate.version), "replaced": _version(current),
                              "candidate": _figures(candidate), "current": _figures(current) if current is not None else None}
    if os.environ.get("SIBEATGAN_REQUESTED_BY"):
        record["requested_by"] = os.environ["SIBEATGAN_REQUESTED_BY"]
    if force:
        record.update(forced=True, reason=reason)
    return record


def _decide(client: Any, record: dict[str, Any], candidate: Any, current: Any, label: str, n_bootstrap: int, margin: float, seed: int,
            min_records: int, min_beats: int, force: bool) -> None:
    """Run the gate into `record["comparison"]`; raise PromotionRefused when it says no, unless forced."""
    if current is None:
        return
    if force:  # a forced move skips the gate (its reason is recorded); a gate that cannot even run must not stop it
        record["comparison"] = {"skipped": "forced"}
        return
    cmp = gate(client, candidate, current, n_bootstrap, margin, seed, min_records, min_beats)
    record["comparison"] = cmp
    if cmp["passed"]:
        return
    raise PromotionRefused(f"refused: {label} against version {current.version} ({record['to']}): {cmp['reason']}\n"
                           f"  {record['to']}: {_figures(current)}\n  candidate: {_figures(candidate)}{_paired_text(cmp)}")


def history(name: str, uri: str | None = None) -> list[dict[str, Any]]:
    """Every recorded move of `name` (from the version tags), oldest first: one entry per generation."""
    client = _client(uri)
    with _errors(name, "*", uri):
        moves: dict[int, dict[str, Any]] = {}
        for mv in client.search_model_versions(f"name = '{name}'"):
            for key, value in mv.tags.items():
                head, _, gen = key.rpartition(".")
                if head in MOVE_KEYS and gen.isdigit():
                    moves.setdefault(int(gen), {"generation": int(gen), **json.loads(value)})
    return [moves[g] for g in sorted(moves)]
