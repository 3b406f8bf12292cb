"""Ingest from a local folder, PhysioNet (offline: fail fast; cached: no network) and S3 (a real moto server)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sibeatgan.config import IngestConfig, SynthConfig
from sibeatgan.data import sources
from sibeatgan.data.sources import CACHE_MARKER, OUTPUT_MARKER, run_ingest, staged_dir
from sibeatgan.data.synth import run_synth
from sibeatgan.errors import ConfigError, SourceError

MOTO_KEY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
BUCKET = "ecg-data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sums(folder: Path) -> dict[str, str]:
    return {name: digest for digest, name in (line.split("  ") for line in (folder / "SHA256SUMS").read_text().splitlines())}


def _marker(folder: Path) -> dict:
    return json.loads((folder / OUTPUT_MARKER).read_text())


def _assert_good_copy(out: Path, src: Path, records: list[str]) -> None:
    assert (out / "RECORDS").read_text().split() == records
    sums = _sums(out)
    assert set(sums) == {p.name for p in out.iterdir()} - {"SHA256SUMS", OUTPUT_MARKER}
    marker = _marker(out)
    assert marker["written_by"].startswith("sibeatgan ") and marker["step"] == "ingest" and marker["written_at"]
    for name, digest in sums.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
        if name != "RECORDS":
            assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert {n.rsplit(".", 1)[0] for n in sums} - {"RECORDS"} == set(records)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging left behind"


@pytest.fixture(scope="module")
def synth_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "synth"
    run_synth(SynthConfig(n_records=3, duration_s=30.0, seed=1), out)
    return out


@pytest.fixture
def mitdb_copy(mitdb_dir: Path, tmp_path: Path) -> Path:
    """Records 100 and 101 of the real database with its SHA256SUMS, in a folder a test may damage."""
    src = tmp_path / "mitdb"
    src.mkdir()
    for name in ("100.hea", "100.dat", "100.atr", "101.hea", "101.dat", "101.atr", "SHA256SUMS"):
        shutil.copyfile(mitdb_dir / name, src / name)
    return src


# Local folders ------------------------------------------------------------------------------


def test_local_subset_of_real_mitdb(mitdb_dir, tmp_path):
    result = run_ingest(IngestConfig(source=str(mitdb_dir), records=("100", "114")), tmp_path / "out")
    assert result["n_records"] == 2 and result["n_files"] == 6 and result["checksums_verified"] == 6
    assert result["bytes"] == sum((mitdb_dir / n).stat().st_size for n in result["files"])
    _assert_good_copy(tmp_path / "out", mitdb_dir, ["100", "114"])


def test_local_all_records_of_synth(synth_src, tmp_path):
    before = {p.name: p.read_bytes() for p in synth_src.iterdir()}
    assert _marker(synth_src)["step"] == "synth", "the source is a sibeatgan output with its own marker"
    result = run_ingest(IngestConfig(source=str(synth_src)), tmp_path / "out")
    assert result["records"] == ["100", "101", "106"] and result["checksums_verified"] == 9
    assert OUTPUT_MARKER not in result["files"]
    _assert_good_copy(tmp_path / "out", synth_src, ["100", "101", "106"])
    assert {p.name: p.read_bytes() for p in synth_src.iterdir()} == before, "the source was modified"


def test_tampered_file_is_refused_and_previous_out_survives(mitdb_copy, tmp_path):
    out = tmp_path / "out"
    run_ingest(IngestConfig(source=str(mitdb_copy)), out)
    good = _sums(out)
    data = bytearray((mitdb_copy / "101.dat").read_bytes())
    data[1000] ^= 0xFF
    (mitdb_copy / "101.dat").write_bytes(bytes(data))
    expected = _sums(mitdb_copy)["101.dat"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(SourceError) as err:
        run_ingest(IngestConfig(source=str(mitdb_copy)), out)
    assert "101.dat" in str(err.value) and expected in str(err.value) and actual in str(err.value)
    assert _sums(out) == good
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    unchecked = run_ingest(IngestConfig(source=str(mitdb_copy), verify_checksums=False), tmp_path / "unchecked")
    assert unchecked["checksums_verified"] == 0 and unchecked["n_files"] == 6


def test_listed_file_missing_is_an_error_only_when_requested(mitdb_copy, tmp_path):
    (mitdb_copy / "100.atr").unlink()
    with pytest.raises(SourceError, match=r"record 100: 100\.atr is listed in SHA256SUMS but missing"):
        run_ingest(IngestConfig(source=str(mitdb_copy)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    result = run_ingest(IngestConfig(source=str(mitdb_copy), records=("101",)), tmp_path / "out")
    assert result["files"] == ["101.atr", "101.dat", "101.hea"]


def test_source_without_checksums_and_missing_dat(synth_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_src, src)
    (src / "SHA256SUMS").unlink()
    result = run_ingest(IngestConfig(source=str(src)), tmp_path / "out")
    assert result["checksums_verified"] == 0 and result["checksums_unlisted"] == 9
    _assert_good_copy(tmp_path / "out", src, ["100", "101", "106"])
    (src / "106.dat").unlink()
    with pytest.raises(SourceError, match=r"record 106: 106\.dat is missing"):
        run_ingest(IngestConfig(source=str(src)), tmp_path / "out2")


def test_missing_record_requested(mitdb_copy, tmp_path):
    with pytest.raises(SourceError, match=r"record\(s\) 999, 205 not found"):
        run_ingest(IngestConfig(source=str(mitdb_copy), records=("100", "999", "205")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_empty_and_absent_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no records here")
    with pytest.raises(SourceError, match="no WFDB records"):
        run_ingest(IngestConfig(source=str(tmp_path / "empty")), tmp_path / "out")
    with pytest.raises(SourceError, match="does not exist"):
        run_ingest(IngestConfig(source=str(tmp_path / "nowhere")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_out_may_not_overlap_the_source(synth_src):
    with pytest.raises(SourceError, match="must not contain each other"):
        run_ingest(IngestConfig(source=str(synth_src)), synth_src)
    with pytest.raises(SourceError, match="must not contain each other"):
        run_ingest(IngestConfig(source=str(synth_src)), synth_src / "copy")
    assert (synth_src / "100.hea").is_file()


def test_bad_config_values(synth_src, tmp_path):
    with pytest.raises(ConfigError, match="records"):
        run_ingest(IngestConfig(source=str(synth_src), records=("../100",)), tmp_path / "out")
    with pytest.raises(ConfigError, match="source"):
        run_ingest(IngestConfig(source="https://example.org/mitdb"), tmp_path / "out")


def test_physionet_named_checksums_are_verified(mitdb_copy, tmp_path):
    (mitdb_copy / "SHA256SUMS").rename(mitdb_copy / "SHA256SUMS.txt")
    result = run_ingest(IngestConfig(source=str(mitdb_copy)), tmp_path / "out")
    assert result["checksums_verified"] == 6 and result["checksums_unlisted"] == 0
    assert sorted(_sums(tmp_path / "out")) == ["100.atr", "100.dat", "100.hea", "101.atr", "101.dat", "101.hea",
                                               "RECORDS"], "the output writes our own SHA256SUMS"
    assert not (tmp_path / "out" / "SHA256SUMS.txt").exists()
    data = bytearray((mitdb_copy / "100.hea").read_bytes())
    data[0] ^= 0x01
    (mitdb_copy / "100.hea").write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"checksum mismatch for 100\.hea .*\(SHA256SUMS\.txt\)"):
        run_ingest(IngestConfig(source=str(mitdb_copy)), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_sha256sums_is_preferred_over_the_txt_name(mitdb_copy, tmp_path):
    bogus = "".join(f"{'0' * 64}  {n}\n" for n in ("100.dat", "101.dat"))
    (mitdb_copy / "SHA256SUMS.txt").write_text(bogus)
    result = run_ingest(IngestConfig(source=str(mitdb_copy)), tmp_path / "out")
    assert result["checksums_verified"] == 6
    (mitdb_copy / "SHA256SUMS").unlink()
    with pytest.raises(SourceError, match=r"checksum mismatch for 10[01]\.dat .*\(SHA256SUMS\.txt\)"):
        run_ingest(IngestConfig(source=str(mitdb_copy)), tmp_path / "out2")


# Output folders -----------------------------------------------------------------------------


def test_out_with_user_files_is_refused_before_any_work(monkeypatch, synth_src, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    refused = (rf"^{re.escape(str(out))}: folder is not empty and was not written by sibeatgan .* "
               "choose a new or empty folder")
    with pytest.raises(ConfigError, match=refused):
        run_ingest(IngestConfig(source=str(synth_src)), out)
    # Checked before the source is even looked at: neither a missing folder nor a download comes first.
    with pytest.raises(ConfigError, match=refused):
        run_ingest(IngestConfig(source=str(tmp_path / "nowhere")), out)
    _closed_port_address(monkeypatch)
    with pytest.raises(ConfigError, match=refused):
        run_ingest(IngestConfig(source="physionet", cache_dir=str(tmp_path / "cache")), out)
    with pytest.raises(ConfigError, match=refused):
        run_synth(SynthConfig(n_records=1, duration_s=12.0), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "no staging, cache or output left behind"


def test_out_that_is_a_file_or_link_is_refused(synth_src, tmp_path):
    (tmp_path / "out.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'out.txt'))}: is a file, not a folder"):
        run_ingest(IngestConfig(source=str(synth_src)), tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "keep me"
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'link'))}: is a symbolic link"):
        run_synth(SynthConfig(n_records=1, duration_s=12.0), tmp_path / "link")
    assert (tmp_path / "link").is_symlink()


def test_empty_folder_and_our_own_output_are_replaced(synth_src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_ingest(IngestConfig(source=str(synth_src), records=("100",)), out)
    _assert_good_copy(out, synth_src, ["100"])
    (out / "scratch.txt").write_text("added to our output later")
    run_ingest(IngestConfig(source=str(synth_src), records=("101",)), out)
    _assert_good_copy(out, synth_src, ["101"])
    assert not (out / "scratch.txt").exists()


def test_out_filled_by_someone_else_during_the_run_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(out))}: folder is not empty"), staged_dir(out) as stage:
        (stage / "result.txt").write_text("ours")
        (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["theirs.txt"]


# PhysioNet ----------------------------------------------------------------------------------


def _closed_port_address(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setattr(sources, "_physionet_address", lambda: ("127.0.0.1", port))


def test_physionet_unreachable_fails_fast(monkeypatch, tmp_path):
    _closed_port_address(monkeypatch)
    start = time.monotonic()
    with pytest.raises(SourceError, match="could not reach PhysioNet") as err:
        run_ingest(IngestConfig(source="physionet", cache_dir=str(tmp_path / "cache")), tmp_path / "out")
    assert time.monotonic() - start < 10
    assert "local folder" in str(err.value) and "s3://" in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_physionet_real_host_offline_fails_fast(tmp_path):
    try:
        socket.create_connection(sources._physionet_address(), timeout=3).close()
        pytest.skip("PhysioNet is reachable from here; the offline path is covered with a closed port")
    except OSError:
        pass
    start = time.monotonic()
    with pytest.raises(SourceError, match="could not reach PhysioNet"):
        run_ingest(IngestConfig(source="physionet", cache_dir=str(tmp_path / "cache")), tmp_path / "out")
    assert time.monotonic() - start < 10


def test_physionet_complete_cache_needs_no_network(monkeypatch, synth_src, tmp_path):
    _closed_port_address(monkeypatch)
    cache = tmp_path / "cache" / "mitdb"
    shutil.copytree(synth_src, cache)
    (cache / "SHA256SUMS").rename(cache / "SHA256SUMS.txt")  # PhysioNet's name for it
    (cache / CACHE_MARKER).write_text(json.dumps({"database": "mitdb", "records": ["100", "101"]}))
    result = run_ingest(IngestConfig(source="physionet", records=("101",), cache_dir=str(tmp_path / "cache")),
                        tmp_path / "out")
    assert result["records"] == ["101"] and result["checksums_verified"] == 3
    _assert_good_copy(tmp_path / "out", cache, ["101"])
    # Asking for every record, which the cache never held, needs the network again.
    with pytest.raises(SourceError, match="could not reach PhysioNet"):
        run_ingest(IngestConfig(source="physionet", cache_dir=str(tmp_path / "cache")), tmp_path / "all")
    (cache / CACHE_MARKER).write_text(json.dumps({"database": "mitdb", "records": "all"}))
    result = run_ingest(IngestConfig(source="physionet", cache_dir=str(tmp_path / "cache")), tmp_path / "all")
    assert result["records"] == ["100", "101", "106"]


def test_physionet_download_fetches_sha256sums_txt(monkeypatch, synth_src, tmp_path):
    """A stand-in for PhysioNet that, like the real server, has SHA256SUMS.txt and no SHA256SUMS."""
    import wfdb
    from wfdb.io import download

    requested: list[list[str]] = []

    def dl_database(db, dl_dir, records, annotators):
        assert db == "mitdb" and records == "all"
        for p in synth_src.iterdir():
            if p.suffix in (".hea", ".dat", ".atr"):
                shutil.copyfile(p, Path(dl_dir) / p.name)

    def dl_files(db, dl_dir, files, overwrite=False):
        requested.append(list(files))
        if files != ["SHA256SUMS.txt"]:
            raise OSError(f"404 Not Found: {files}")
        shutil.copyfile(synth_src / "SHA256SUMS", Path(dl_dir) / "SHA256SUMS.txt")

    monkeypatch.setattr(sources, "_probe_physionet", lambda: None)
    monkeypatch.setattr(wfdb, "dl_database", dl_database)
    monkeypatch.setattr(download, "dl_files", dl_files)
    result = run_ingest(IngestConfig(source="physionet", cache_dir=str(tmp_path / "cache")), tmp_path / "out")
    assert requested == [["SHA256SUMS.txt"]]
    assert result["checksums_verified"] == 9 and result["checksums_unlisted"] == 0
    _assert_good_copy(tmp_path / "out", synth_src, ["100", "101", "106"])
    assert json.loads((tmp_path / "cache" / "mitdb" / CACHE_MARKER).read_text()) == {
        "database": "mitdb", "records": "all"}


# S3 -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A real moto S3 server on a free loopback port, stopped after the session."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on port {port} (see {log.name})")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def bucket(moto_endpoint: str, synth_src: Path):
    """The synthetic database under s3://ecg-data/synth/mitdb, plus a tampered copy and a nested decoy."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, **MOTO_KEY)
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="empty-bucket")
    for p in synth_src.iterdir():
        s3.upload_file(str(p), BUCKET, f"synth/mitdb/{p.name}")
        data = p.read_bytes()
        if p.name == "100.dat":
            data = data[:-1] + bytes([data[-1] ^ 0x01])
        s3.put_object(Bucket=BUCKET, Key=f"tampered/{p.name}", Body=data)
    s3.put_object(Bucket=BUCKET, Key="synth/mitdb/old/999.hea", Body=b"999 2 360 10\n")
    s3.put_object(Bucket=BUCKET, Key="synth/README.txt", Body=b"records are in mitdb/\n")
    return s3


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def test_s3_ingest_all_and_subset(aws_env, moto_endpoint, bucket, synth_src, tmp_path):
    result = run_ingest(IngestConfig(source=f"s3://{BUCKET}/synth/mitdb/", s3_endpoint_url=moto_endpoint),
                        tmp_path / "out", progress=False)
    assert result["records"] == ["100", "101", "106"], "the nested old/999 must not be listed"
    assert result["checksums_verified"] == 9
    _assert_good_copy(tmp_path / "out", synth_src, ["100", "101", "106"])
    result = run_ingest(IngestConfig(source=f"s3://{BUCKET}/synth/mitdb", records=("106",),
                                     s3_endpoint_url=moto_endpoint), tmp_path / "one")
    _assert_good_copy(tmp_path / "one", synth_src, ["106"])


def test_s3_tampered_object_is_refused(aws_env, moto_endpoint, bucket, tmp_path):
    with pytest.raises(SourceError, match=r"checksum mismatch for 100\.dat from s3://ecg-data/tampered"):
        run_ingest(IngestConfig(source=f"s3://{BUCKET}/tampered", s3_endpoint_url=moto_endpoint), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("source", "message"), [
    ("s3://no-such-bucket/mitdb", r"bucket 'no-such-bucket' does not exist at http://127\.0\.0\.1"),
    (f"s3://{BUCKET}/nothing/here", r"s3://ecg-data/nothing/here at http://127\.0\.0\.1:\d+: no objects directly"),
    ("s3://empty-bucket", r"s3://empty-bucket at .*: no objects directly"),
    (f"s3://{BUCKET}/synth", r"s3://ecg-data/synth at .* holds no WFDB records"),
])
def test_s3_missing_bucket_or_prefix(aws_env, moto_endpoint, bucket, tmp_path, source, message):
    with pytest.raises(SourceError, match=message):
        run_ingest(IngestConfig(source=source, s3_endpoint_url=moto_endpoint), tmp_path / "out")


def test_s3_without_credentials(aws_env, monkeypatch, moto_endpoint, bucket, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SourceError, match=r"no AWS credentials to list s3://ecg-data/synth/mitdb at http"):
        run_ingest(IngestConfig(source=f"s3://{BUCKET}/synth/mitdb", s3_endpoint_url=moto_endpoint),
                   tmp_path / "out")


def test_s3_unreachable_endpoint_fails_fast(aws_env, tmp_path):
    endpoint = f"http://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(SourceError, match=rf"could not reach the S3 endpoint {endpoint} to list s3://ecg-data/x"):
        run_ingest(IngestConfig(source="s3://ecg-data/x", s3_endpoint_url=endpoint), tmp_path / "out")
    assert time.monotonic() - start < 10


def test_s3_address_without_bucket(tmp_path):
    with pytest.raises(SourceError, match="s3://bucket/prefix"):
        run_ingest(IngestConfig(source="s3:///mitdb"), tmp_path / "out")


def test_output_folder_gets_the_usual_permissions(tmp_path):
    from sibeatgan.config import SynthConfig
    from sibeatgan.data.synth import run_synth
    from sibeatgan.files import process_umask

    run_synth(SynthConfig(n_records=1, duration_s=20), tmp_path / "s")
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o777 & ~process_umask()
