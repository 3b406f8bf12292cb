"""Promotion on a real server (PostgreSQL, S3 on moto, basic-auth): a READ user can neither block nor move it, a promotion
or rollback killed after any write is completed by the next command, the lock expires, the gate is non-inferiority
with minimum evidence, a rollback is gated, and the command's exit codes tell refusal from failure."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sibeatgan.config import TrackingConfig
from sibeatgan.registry import (GENERATION_TAG, INTENT_TAG, LOCK_TAG, PromotionBusy, PromotionRefused, RegistryError, _live, history,
                                promote, rollback, run_register)

pytest_plugins = ["tests.services"]

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "si-beatgan-promote-src"
SETTLE = float(os.environ.get("SIBEATGAN_TEST_LOCK_SETTLE_S", "4"))  # the lock's wait: generous, for a loaded test machine
WRITES = ("create_registered_model", "delete_registered_model", "set_registered_model_alias", "delete_registered_model_alias",
          "set_model_version_tag", "set_registered_model_tag", "delete_registered_model_tag")


@pytest.fixture(scope="module")
def sources(mlflow_server, small_teacher: dict, untrained_teacher: dict, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The good small teacher, a degraded copy (its weights with noise: somewhat worse) and the untrained one, each registered
    once; tests copy these versions (same run, same stored scores) into models of their own."""
    import torch

    from sibeatgan.config import EvaluateConfig
    from sibeatgan.evaluate import run_evaluate
    from sibeatgan.modelio import load_generator, save_generator

    root = tmp_path_factory.mktemp("promote_sources")
    gen, meta = load_generator(small_teacher["generator"])
    torch.manual_seed(3)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.25 * p.std().clamp_min(1e-3))
    save_generator(root / "degraded.pt", gen, **{k: v for k, v in meta.items() if k != "hparams"})
    run_evaluate(EvaluateConfig(n_bootstrap=20, device="cpu", batch_size=1024), small_teacher["dataset"], root / "degraded.pt",
                 root / "degraded_eval")
    degraded = {"generator": root / "degraded.pt", "eval": root / "degraded_eval", "dataset": small_teacher["dataset"]}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in mlflow_server.env().items():
            mp.setenv(key, value)
        out = {}
        for kind, teacher in (("good", small_teacher), ("degraded", degraded), ("bad", untrained_teacher)):
            out[kind] = run_register(TrackingConfig(model_name=SOURCE), teacher["generator"], teacher["eval"], teacher["dataset"],
                                     root / kind)["version"]
    return out


def _model(name: str, sources: dict[str, Any], *kinds: str) -> list[int]:
    """A registered model `name` with one version per kind, copied from the source versions (same run, tags and scores)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.create_registered_model(name)
    out = []
    for kind in kinds:
        src = client.get_model_version(SOURCE, str(sources[kind]))
        out.append(int(client.create_model_version(name, src.source, run_id=src.run_id, tags=dict(src.tags)).version))
    return out


def _alias(name: str, alias: str) -> int | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return int(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _set(name: str, alias: str, version: int) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, str(version))


def _tags(name: str) -> dict[str, str]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_registered_model(name).tags)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sibeatgan promote ...` in a process of its own (exit codes and stderr as a user sees them)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sibeatgan.cli", "promote", *args, "--set", f"lock_settle_s={SETTLE}"],
                          capture_output=True, text=True, env=full, cwd=ROOT, timeout=300)


def test_read_user_can_neither_block_nor_move_a_promotion(mlflow_env, sources: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The old lock was a registered model anyone may create: a READ user squatted it and every promotion failed."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name = "si-beatgan-promote-perm"
    (v1,) = _model(name, sources, "good")
    _set(name, "staging", v1)
    mlflow_env.create_user("carol", "carol-password-1234")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "carol")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "carol-password-1234")
    carol = MlflowClient()
    for generation in range(1, 4):  # what blocked the old lock: the lock models of the next generations, created in advance
        carol.create_registered_model(f"{name}.promotions.production.{generation}")
    lock = json.dumps({"token": "x", "who": "carol", "host": "elsewhere", "pid": 1, "expires": time.time() + 3600})
    for write in (lambda: carol.set_registered_model_tag(name, LOCK_TAG.format(alias="production"), lock),
                  lambda: carol.set_registered_model_tag(name, INTENT_TAG.format(alias="production"), "{}"),
                  lambda: carol.set_registered_model_alias(name, "production", str(v1)),
                  lambda: carol.set_model_version_tag(name, str(v1), "promotion.1", "{}")):
        with pytest.raises(MlflowException, match="403|PERMISSION_DENIED"):
            write()
    with pytest.raises(RegistryError, match="'carol' may not move .*needs EDIT"):
        promote(name, n_bootstrap=50, lock_settle_s=SETTLE)
    result = _cli("--name", name, env={"MLFLOW_TRACKING_USERNAME": "carol", "MLFLOW_TRACKING_PASSWORD": "carol-password-1234"})
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1 and "may not move" in result.stderr, result.stderr
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_env.admin_password)
    assert LOCK_TAG.format(alias="production") not in _tags(name)
    assert promote(name, n_bootstrap=50, lock_settle_s=SETTLE)["moved"]  # the promoting account is not blocked
    assert _alias(name, "production") == v1


KILLER = """
import os, signal, sys
from mlflow import MlflowClient
from sibeatgan import registry

kill_after, action, name, settle = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
count = [0]

def wrap(method):
    def write(self, *args, **kwargs):
        out = method(self, *args, **kwargs)
        count[0] += 1
        if count[0] == kill_after:
            print("killed after", method.__name__, args[1:], flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return write

for m in {writes!r}:
    setattr(MlflowClient, m, wrap(getattr(MlflowClient, m)))
print((registry.promote if action == "promote" else registry.rollback)(name, n_bootstrap=50, lock_settle_s=settle))
"""


@pytest.mark.parametrize("action", ["promote", "rollback"])
def test_killed_after_any_write_the_next_command_completes_the_move(mlflow_env, sources: dict, tmp_path: Path, action: str) -> None:
    """SIGKILL after the 1st, 2nd, ... server write of a promotion (or rollback), until one runs through: the next command
    completes it, so production, `previous` and the audit trail are as if it had not been killed, and nothing is left locked."""
    name = f"si-beatgan-promote-kill-{action}"
    a, b = _model(name, sources, "good", "good")  # the same scores: the gate lets each replace the other
    _set(name, "staging", a)
    promote(name, n_bootstrap=50, lock_settle_s=SETTLE)  # production a
    if action == "rollback":
        _set(name, "staging", b)
        promote(name, n_bootstrap=50, lock_settle_s=SETTLE)  # production b, previous a
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(writes=WRITES))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = 0
    for k in range(1, 20):
        prod, prev = _alias(name, "production"), _alias(name, "previous")
        want = (b if prod == a else a, prod) if action == "promote" else (prev, prod)
        if action == "promote":
            _set(name, "staging", want[0])
        before = len(history(name))
        run = subprocess.run([sys.executable, str(script), str(k), action, name, str(SETTLE)], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=300)
        if run.returncode == 0:
            assert (_alias(name, "production"), _alias(name, "previous")) == want
            break
        assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
        killed += 1
        tags = _tags(name)
        if action == "rollback" and INTENT_TAG.format(alias="production") not in tags and int(tags.get(GENERATION_TAG, 0)) == before + 1:
            continue  # killed after the rollback had committed: a second rollback would (rightly) roll back once more
        move = promote if action == "promote" else rollback
        again = move(name, n_bootstrap=50, lock_settle_s=SETTLE)
        assert (_alias(name, "production"), _alias(name, "previous")) == want, (k, run.stdout, again)
        trail = history(name)
        assert [r["generation"] for r in trail] == list(range(1, len(trail) + 1)), (k, trail)
        assert len(trail) == before + 1, (k, run.stdout, trail)
        assert (trail[-1]["action"], trail[-1]["version"], trail[-1]["replaced"]) == (action, want[0], want[1]), (k, trail[-1])
        tags = _tags(name)
        assert int(tags[GENERATION_TAG]) == len(trail)
        assert INTENT_TAG.format(alias="production") not in tags, (k, tags)
        assert not _live(json.loads(tags.get(LOCK_TAG.format(alias="production"), "{}"))), (k, tags)  # at most a dead one's
    assert killed >= 6, f"only {killed} write points"


def test_a_lock_expires(mlflow_env, sources: dict) -> None:
    """A lock left by a promotion on another machine holds until it expires, then the next promotion takes over."""
    from mlflow import MlflowClient

    name = "si-beatgan-promote-ttl"
    (v1,) = _model(name, sources, "good")
    _set(name, "staging", v1)
    key = LOCK_TAG.format(alias="production")
    lock = {"token": "gone", "who": "admin", "host": "another-" + socket.gethostname(), "pid": 1, "since": "then",
            "expires": time.time() + 3600}
    MlflowClient().set_registered_model_tag(name, key, json.dumps(lock))
    with pytest.raises(PromotionBusy, match="in progress"):
        promote(name, n_bootstrap=50, lock_settle_s=SETTLE)
    result = _cli("--name", name)
    assert result.returncode == 4 and "in progress" in result.stderr, result.stderr
    assert _alias(name, "production") is None
    MlflowClient().set_registered_model_tag(name, key, json.dumps({**lock, "expires": time.time() + 1}))
    time.sleep(1.5)
    assert promote(name, n_bootstrap=50, lock_settle_s=SETTLE)["moved"] and _alias(name, "production") == v1


def test_gate_refuses_a_candidate_that_may_be_worse(mlflow_env, sources: dict) -> None:
    """Non-inferiority: a candidate lower in AUC is refused because its interval's lower end is below -margin (the
    decision no longer rests on a p-value); the CLI says so with exit 1, and a stated wider margin lets it through."""
    name = "si-beatgan-promote-gate"
    good, degraded = _model(name, sources, "good", "degraded")
    _set(name, "staging", good)
    promote(name, n_bootstrap=200, lock_settle_s=SETTLE)
    _set(name, "staging", degraded)
    with pytest.raises(PromotionRefused, match="non-inferiority margin: it may be worse") as refused:
        promote(name, n_bootstrap=200, lock_settle_s=SETTLE)
    text = str(refused.value)
    assert f"version {degraded}" in text and f"version {good}" in text and "delta AUC" in text
    from mlflow import MlflowClient

    from sibeatgan.registry import gate

    client = MlflowClient()
    cmp = gate(client, client.get_model_version(name, str(degraded)), client.get_model_version(name, str(good)), 200)
    assert cmp["delta_auc"] < 0 and cmp["delta_auc_ci"][0] < -0.005 and not cmp["passed"], cmp
    result = _cli("--name", name, "--set", "n_bootstrap=200")
    assert result.returncode == 1 and "may be worse" in result.stderr, result.stderr
    assert _alias(name, "production") == good
    # a wide enough margin (stated in config) lets it through
    assert promote(name, n_bootstrap=200, lock_settle_s=SETTLE, margin=1.0)["moved"]


def test_too_little_evidence_is_a_refusal_that_says_so(mlflow_env, sources: dict) -> None:
    name = "si-beatgan-promote-evidence"
    a, b = _model(name, sources, "good", "good")
    _set(name, "staging", a)
    promote(name, n_bootstrap=50, lock_settle_s=SETTLE)
    _set(name, "staging", b)
    with pytest.raises(PromotionRefused, match=r"too little evidence to compare: \d+ records \(at least 50\), \d+ beats \(at least 10"):
        promote(name, n_bootstrap=50, lock_settle_s=SETTLE, min_records=50, min_beats=10**7)
    result = _cli("--name", name, "--set", "min_records=50")
    assert result.returncode == 1 and "too little evidence" in result.stderr, result.stderr
    assert _alias(name, "production") == a


def test_rollback_is_gated_forced_only_with_a_reason_and_says_what_it_restores(mlflow_env, sources: dict) -> None:
    """The old rollback put back whatever `previous` held: after two rollbacks, a version the gate refuses was in production."""
    name = "si-beatgan-promote-rollback"
    bad, good = _model(name, sources, "bad", "good")
    _set(name, "staging", bad)
    promote(name, n_bootstrap=50, lock_settle_s=SETTLE)  # the first production model has nothing to be compared with
    _set(name, "staging", good)
    assert promote(name, n_bootstrap=50, lock_settle_s=SETTLE)["replaced"] == bad
    with pytest.raises(PromotionRefused, match=f"version {bad} \\(previous\\).*may be worse"):
        rollback(name, n_bootstrap=50, lock_settle_s=SETTLE)
    assert (_alias(name, "production"), _alias(name, "previous")) == (good, bad)
    result = _cli("--name", name, "--rollback")
    assert result.returncode == 1 and "may be worse" in result.stderr, result.stderr
    result = _cli("--name", name, "--rollback", "--force")
    assert result.returncode == 2 and "--reason" in result.stderr, result.stderr
    result = _cli("--name", name, "--rollback", "--force", "--reason", "incident 42: good misses paced beats")
    assert result.returncode == 0, result.stderr
    moved = json.loads(result.stdout)
    assert moved["restores"].startswith(f"version {bad}: AUC") and moved["forced"] and moved["reason"].startswith("incident 42")
    assert (_alias(name, "production"), _alias(name, "previous")) == (bad, good)
    assert rollback(name, n_bootstrap=50, lock_settle_s=SETTLE)["version"] == good  # back to the better one: the gate agrees
    trail = history(name)
    assert [(r["action"], r["version"], r.get("forced", False)) for r in trail] == [
        ("promote", bad, False), ("promote", good, False), ("rollback", bad, True), ("rollback", good, False)]
    assert trail[2]["reason"] == "incident 42: good misses paced beats" and "comparison" in trail[2]


def test_exit_codes_tell_refusal_usage_and_infrastructure_apart(mlflow_env, sources: dict) -> None:
    name = "si-beatgan-promote-exit"
    (v1,) = _model(name, sources, "good")
    result = _cli("--name", name)  # no version at staging
    assert result.returncode == 2 and "no version with alias 'staging'" in result.stderr, result.stderr
    _set(name, "staging", v1)
    result = _cli("--name", name)
    assert result.returncode == 0 and json.loads(result.stdout)["moved"], result.stderr
    result = _cli("--name", name, env={"MLFLOW_TRACKING_PASSWORD": "wrong-password"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 3 and len(errors) == 1 and "credentials" in errors[0] and "Traceback" not in result.stderr, result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _cli("--name", name, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # (urllib3 may log its one retry)
    assert result.returncode == 3 and len(errors) == 1 and "unreachable" in errors[0] and "Traceback" not in result.stderr, result.stderr
