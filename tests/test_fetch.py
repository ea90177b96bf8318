"""`dogetickets.data.fetch` against a loopback HTTP server serving the shared data (no internet)."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dogetickets.data import fetch as fetch_mod
from dogetickets.data.fetch import checksums, fetch
from dogetickets.errors import DogeError

REPO = Path(__file__).resolve().parents[1]


def _served_root() -> Path:
    """The folder holding `dogetickets/` (CI: DOGE_DATA_DIR's parent; locally: ../shared/data)."""
    env = os.environ.get("DOGE_DATA_DIR")
    if env:
        data = Path(env)
        data = data if data.is_absolute() else REPO / data
        if data.resolve().is_dir():
            return data.resolve().parent
    return Path(__file__).resolve().parents[2] / "shared" / "data"


ROOT = _served_root()
needs_data = pytest.mark.skipif(
    not (ROOT / "dogetickets" / "SHA256SUMS").is_file(), reason=f"shared data not found under {ROOT}"
)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@functools.cache
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _serve(root: Path) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dogetickets"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from _serve(ROOT)


@pytest.fixture(scope="module")
def amazon_dir(tmp_path_factory: pytest.TempPathFactory, base_url: str) -> tuple[Path, list[Path]]:
    to = tmp_path_factory.mktemp("fetched")
    return to, fetch("amazon", to, base_url=base_url, progress=False, timeout=10)


def test_table_matches_shared_sums() -> None:
    table = checksums()
    assert len(table) == 60
    assert table["amazon/All_Beauty/train.json"] == (
        "3343e64f07d9da56421e69947cc6257711332204749c817b61676ad435df28e7"
    )
    assert set(checksums("amazon")) == {k for k in table if k.startswith("amazon/")}
    assert checksums("all") == table
    assert all(len(v) == 64 for v in table.values())


@needs_data
def test_fetch_amazon_downloads_and_verifies(amazon_dir: tuple[Path, list[Path]]) -> None:
    to, paths = amazon_dir
    table = checksums("amazon")
    assert len(table) == 25
    assert paths == [to / rel for rel in table]
    for rel, digest in table.items():
        assert _sha(to / rel) == digest, rel
    assert not [p for p in to.rglob("*") if p.is_file() and p.suffix != ".json"]  # no temp files left


@needs_data
def test_second_fetch_skips_existing(amazon_dir: tuple[Path, list[Path]], base_url: str) -> None:
    to, paths = amazon_dir
    before = {p: p.stat().st_mtime_ns for p in paths}
    # a dead server proves nothing is requested
    again = fetch("amazon", to, base_url="http://127.0.0.1:9/none", progress=False, timeout=2)
    assert again == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == before


@needs_data
def test_refetches_a_damaged_file(tmp_path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "amazon/Gift_Cards/dev.json"
    monkeypatch.setattr(fetch_mod, "checksums", lambda task=None: {rel: checksums()[rel]})
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("truncated")
    fetch("amazon", tmp_path, base_url=base_url, progress=True)
    assert _sha(tmp_path / rel) == checksums()[rel]


@needs_data
def test_corrupted_file_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad = "amazon/All_Beauty/dev.json", "amazon/Automotive/dev.json"
    served = tmp_path / "served"
    for rel in (good, bad):
        (served / "dogetickets" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "dogetickets" / rel, served / "dogetickets" / rel)
    with open(served / "dogetickets" / bad, "ab") as f:
        f.write(b'{"text": "tampered", "label": 0}\n')
    table = checksums()
    monkeypatch.setattr(fetch_mod, "checksums", lambda task=None: {good: table[good], bad: table[bad]})
    to = tmp_path / "to"
    server = _serve(served)
    url = next(server)
    try:
        with pytest.raises(DogeError) as err:
            fetch("amazon", to, base_url=url, progress=False)
    finally:
        server.close()
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bad}: sha256 mismatch (expected {table[bad][:12]}")
    assert _sha(to / good) == table[good]  # the good one before it was kept
    assert not (to / bad).exists()
    assert [p.name for p in (to / bad).parent.iterdir()] == []  # no temp file left


@needs_data
def test_404_is_one_line_error(tmp_path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rel = "amazon/No_Such_Domain/dev.json"
    monkeypatch.setattr(fetch_mod, "checksums", lambda task=None: {rel: "0" * 64})
    with pytest.raises(DogeError) as err:
        fetch("amazon", tmp_path, base_url=base_url, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{base_url}/{rel}" in msg and "404" in msg
    assert not list((tmp_path / "amazon" / "No_Such_Domain").iterdir())


def test_unknown_task(tmp_path: Path) -> None:
    for call in (lambda: fetch("imdb", tmp_path, progress=False), lambda: checksums("imdb")):
        with pytest.raises(DogeError) as err:
            call()
        msg = str(err.value)
        assert "imdb" in msg and all(t in msg for t in ("amazon", "mnli", "ontonote", "all"))
    assert not list(tmp_path.iterdir())
