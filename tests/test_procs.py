"""Killed commands leave nothing behind: their worker processes die with them, and their interrupted writes are
removed by the next run. The commands run as a user runs them (`python -m sibeatgan.cli`, killed with a signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sibeatgan.config import BEATGAN_RECORDS
from sibeatgan.files import atomic_open

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sibeatgan.cli", "--log-level", "INFO", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def sib(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sibeatgan.cli", "--log-level", "INFO", *args], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids = {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
        for kid in kids - found:
            found |= {kid} | descendants(kid)
    return found


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_and_check_no_child_survives(proc: subprocess.Popen, sig: int, within_s: float = 5.0) -> set[int]:
    """Send `sig` to the command and return the processes it had started, asserting each has ended within `within_s`."""
    kids = descendants(proc.pid)
    assert kids, "the command had started no worker process yet"
    proc.send_signal(sig)
    proc.wait(30)
    try:
        wait_for(lambda: not any(alive(k) for k in kids), within_s, "the workers to end")
    finally:
        for k in kids:  # never leave one running, even when the test fails
            if alive(k):
                os.kill(k, signal.SIGKILL)
    return kids


needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc (Linux)")


@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_preprocess_workers_die_with_the_command(mitdb_dir, tmp_path, sig):
    proc = start("preprocess", "--source", str(mitdb_dir), "--out", str(tmp_path / "beats"), "--records", ",".join(BEATGAN_RECORDS),
                 "--no-progress", "--no-track")
    try:
        wait_for(lambda: len(descendants(proc.pid)) >= 2 or proc.poll() is not None, 60, "the pool's workers to start")
        time.sleep(1.0)  # the workers are busy with records now
        kill_and_check_no_child_survives(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM  # unwound (pool stopped, temp files removed), not cut off
    assert not list((tmp_path / "beats").glob(".*.tmp"))


@needs_proc
def test_tune_workers_die_with_the_command(synth_dataset, tmp_path):
    r = sib("train-teacher", "--dataset", str(synth_dataset), "--out", str(tmp_path / "teacher"), "--epochs", "1", "--device", "cpu",
            "--no-progress", "--no-track", "--set", "ngf=8", "--set", "ndf=8", "--set", "nz=8", "--set", "max_train_beats=256",
            "--set", "cuda_graph=false")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "tune"
    proc = start("tune", "--dataset", str(synth_dataset), "--teacher", str(tmp_path / "teacher"), "--out", str(out), "--trials", "4",
                 "--workers", "2", "--group-size", "1", "--no-track", "--set", "student.epochs=500", "--set", "student.device=cpu",
                 "--set", "student.nz=8", "--set", "student.ngf=8", "--set", "student.ndf=8",
                 "--set", "student.max_train_beats=256", "--set", "student.cuda_graph=false")
    try:
        # both workers are training: each has its trial's folder
        wait_for(lambda: len(list((out / "trials").glob("*/*"))) >= 2 or proc.poll() is not None, 300, "two trials to start")
        assert proc.poll() is None, proc.stderr.read()
        kill_and_check_no_child_survives(proc, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


WRITER = textwrap.dedent("""
    import os, signal, sys
    from sibeatgan.files import atomic_open

    with atomic_open(sys.argv[1]) as fh:
        fh.write(b"half a file")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
""")


def killed_mid_write(target: Path) -> Path:
    """A real process killed by SIGKILL inside `atomic_open(target)`; returns the temp file it left."""
    r = subprocess.run([sys.executable, "-c", WRITER, str(target)], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    (tmp,) = target.parent.glob(f".{target.name}.*.tmp")
    return tmp


def test_a_rerun_removes_what_an_interrupted_write_left(synth_db, tmp_path):
    out = tmp_path / "beats"
    leftover = killed_mid_write(out / "beats.npz")
    assert leftover.read_bytes() == b"half a file" and not (out / "beats.npz").exists()
    r = sib("preprocess", "--source", str(synth_db), "--out", str(out), "--records", "100,101", "--no-progress", "--no-track")
    assert r.returncode == 0, r.stderr
    assert (out / "beats.npz").is_file() and not leftover.exists()
    assert not list(out.rglob("*.tmp"))


def test_a_live_writers_temp_file_is_kept(tmp_path):
    from sibeatgan.files import remove_stale_temps

    target = tmp_path / "m.json"
    with atomic_open(target, "w") as fh:  # this process is writing it
        (tmp,) = tmp_path.glob(".m.json.*.tmp")
        assert remove_stale_temps(target) == [] and tmp.exists()
        with atomic_open(target, "w") as other:  # a second writer of the same target (another thread, say) keeps it too
            assert tmp.exists()
            other.write("B")
        fh.write("A")
    assert target.read_text() == "A" and not list(tmp_path.glob("*.tmp"))


def test_a_temp_file_of_a_reused_pid_or_another_host_is_judged_by_its_age(tmp_path):
    from sibeatgan.files import _HOST, STALE_AFTER_S, remove_stale_temps

    target = tmp_path / "beats.npz"
    before_boot = time.time() - 10 * 365 * 86400  # older than any process now running: none of them wrote it
    reused = tmp_path / f".beats.npz.{_HOST}.{os.getppid()}.abcdefgh.tmp"  # a live pid (our parent), started after the write
    foreign_old = tmp_path / ".beats.npz.otherhost.123.abcdefgh.tmp"
    foreign_new = tmp_path / ".beats.npz.otherhost.124.abcdefgh.tmp"
    legacy_old = tmp_path / ".beats.npz.x1y2z3w4.tmp"  # the name form before the writer was in it
    other_target = tmp_path / ".beats.npz.bak.x1y2z3w4.tmp"  # a temp file of beats.npz.bak, not of beats.npz
    for p in (reused, foreign_old, foreign_new, legacy_old, other_target):
        p.write_bytes(b"x")
    for p in (reused, foreign_old, legacy_old, other_target):
        os.utime(p, (before_boot, before_boot))
    os.utime(foreign_new, (time.time() - STALE_AFTER_S / 2,) * 2)
    removed = remove_stale_temps(target)
    assert sorted(removed) == sorted([reused, foreign_old, legacy_old])
    assert foreign_new.exists() and other_target.exists()
