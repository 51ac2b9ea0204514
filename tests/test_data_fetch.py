"""``pyramidrepro data fetch`` against a local HTTP server, and ``validate``'s line on the data.

The server (127.0.0.1, an ephemeral port) serves an archive in the official format that the tests
make; what a reader would take for CIFAR-10 must appear whole or not at all, whatever goes wrong.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

import pyramidrepro.cli as cli_package
from pyramidrepro.cli import data as cli_data
from pyramidrepro.workload.data import (
    ARCHIVE_NAME,
    BATCHES_DIR,
    DataError,
    check_data_available,
    dataset_state,
    load_cifar10,
)
from pyramidrepro.workload.fetch import PARTIAL_ARCHIVE, fetch_archive, leftovers
from support import SMOKE
from support.cifar_format import write_cifar10
from support.hide import hiding_env

#: how long a stalled response holds its connection at most (the fixture releases it sooner)
STALL_S = 20.0


@dataclass
class Served:
    """What the server answers on each path, and how often each was asked for."""

    bodies: dict[str, bytes] = field(default_factory=dict)
    stalling: set[str] = field(default_factory=set)  # send half the body, then nothing
    hits: dict[str, int] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            served.hits[self.path] = served.hits.get(self.path, 0) + 1
            body = served.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in served.stalling:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                served.release.wait(STALL_S)
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@dataclass
class Archive:
    blob: bytes
    sums: dict[str, str]

    @property
    def md5(self) -> str:
        return self.sums[ARCHIVE_NAME]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A tiny dataset in the official format, tar.gz'ed as the official archive is, and its MD5s."""
    where = tmp_path_factory.mktemp("made")
    sums = write_cifar10(where, per_batch=6, test=6)
    return Archive((where / ARCHIVE_NAME).read_bytes(), sums)


@pytest.fixture
def server(archive: Archive) -> Iterator[tuple[str, Served]]:
    """(base URL, what it serves): ``/good``, ``/corrupt`` (one byte flipped) and ``/stall``."""
    corrupt = bytearray(archive.blob)
    corrupt[len(corrupt) // 2] ^= 0xFF
    served = Served(bodies={"/good": archive.blob, "/corrupt": bytes(corrupt), "/stall": archive.blob},
                    stalling={"/stall"})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        served.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


#: whether cli/__init__.py lists ``data`` in COMMANDS (read before any test adds it for itself)
REGISTERED = cli_data in cli_package.COMMANDS


@pytest.fixture
def data_cli(cli, monkeypatch):
    """The ``cli`` fixture with ``data`` among the commands (added here until cli/__init__ lists it)."""
    if not REGISTERED:
        monkeypatch.setattr(cli_package, "COMMANDS", (*cli_package.COMMANDS, cli_data))
    return cli


#: ``python -m pyramidrepro`` with ``data`` added to the commands, until cli/__init__ lists it
UNREGISTERED_MAIN = """\
import sys
import pyramidrepro.cli as cli
from pyramidrepro.cli import data
cli.COMMANDS = (*cli.COMMANDS, data)
sys.exit(cli.main(sys.argv[1:]))
"""


def fetch_command(*args: str) -> list[str]:
    """``python -m pyramidrepro data fetch ARGS`` as a command line for a process of its own."""
    entry = ["-m", "pyramidrepro"] if REGISTERED else ["-c", UNREGISTERED_MAIN]
    return [sys.executable, *entry, "data", "fetch", *args]


def data_section(root: Path, source: str = "cifar10") -> SimpleNamespace:
    return SimpleNamespace(source=source, root=str(root), download=False)


def assert_nothing_readable(root: Path) -> None:
    """Nothing under ``root`` that the loader would read."""
    with pytest.raises(DataError, match="not found under"):
        check_data_available(data_section(root))


def fetch_args(root: Path, url: str, md5: str, *more: str) -> list[str]:
    return ["data", "fetch", "--root", str(root), "--url", url, "--md5", md5, *more]


# ---------------------------------------------------------------------------------------------
# (a) a fetch, and a rerun that downloads nothing
# ---------------------------------------------------------------------------------------------


def test_fetch_verifies_unpacks_and_a_rerun_downloads_nothing(tmp_path, data_cli, server, archive):
    url, served = server
    root = tmp_path / "data"
    r = data_cli(*fetch_args(root, url + "/good", archive.md5))
    assert r.returncode == 0, r.stderr
    assert f"CIFAR-10 ready in {root / BATCHES_DIR}" in r.stdout and f"data.root: {root}" in r.stdout
    assert f"MD5 {archive.md5} as expected" in r.stdout and "100 %" in r.stdout
    assert sorted(os.listdir(root)) == [BATCHES_DIR, ARCHIVE_NAME]
    assert sorted(os.listdir(root / BATCHES_DIR)) == sorted(n for n in archive.sums if n != ARCHIVE_NAME)
    assert (root / ARCHIVE_NAME).read_bytes() == archive.blob
    check_data_available(data_section(root))
    splits = load_cifar10(root, checksums=archive.sums)
    assert len(splits.train) == 30 and len(splits.test) == 6 and BATCHES_DIR in splits.source

    r = data_cli(*fetch_args(root, url + "/good", archive.md5))
    assert r.returncode == 0, r.stderr
    assert "nothing downloaded" in r.stdout and served.hits["/good"] == 1

    r = data_cli(*fetch_args(root, url + "/good", archive.md5.upper(), "--force"))
    assert r.returncode == 0, r.stderr
    assert served.hits["/good"] == 2 and sorted(os.listdir(root)) == [BATCHES_DIR, ARCHIVE_NAME]


def test_a_verified_archive_in_place_is_unpacked_without_a_download(tmp_path, data_cli, server, archive):
    url, served = server
    root = tmp_path / "data"
    root.mkdir()
    (root / ARCHIVE_NAME).write_bytes(archive.blob)
    r = data_cli(*fetch_args(root, url + "/good", archive.md5))
    assert r.returncode == 0, r.stderr
    assert served.hits.get("/good", 0) == 0 and "nothing downloaded" in r.stdout
    load_cifar10(root / BATCHES_DIR, checksums=archive.sums)


def test_an_incomplete_folder_is_replaced_whole(tmp_path, data_cli, server, archive):
    url, _ = server
    root = tmp_path / "data"
    (root / BATCHES_DIR).mkdir(parents=True)
    (root / BATCHES_DIR / "data_batch_1").write_bytes(b"left from a manual copy")
    r = data_cli(*fetch_args(root, url + "/good", archive.md5))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(root)) == [BATCHES_DIR, ARCHIVE_NAME]
    load_cifar10(root, checksums=archive.sums)


def test_fetch_archive_keeps_the_verified_archive_only(tmp_path, server, archive):
    url, _ = server
    path = fetch_archive(tmp_path / "data", url + "/good", archive.md5)
    assert path == tmp_path / "data" / ARCHIVE_NAME and os.listdir(tmp_path / "data") == [ARCHIVE_NAME]
    load_cifar10(tmp_path / "data", checksums=archive.sums)


# ---------------------------------------------------------------------------------------------
# (b) what is refused leaves nothing behind
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("root_exists", [True, False])
def test_a_corrupted_archive_is_refused_before_unpacking(tmp_path, data_cli, server, archive, root_exists):
    url, served = server
    root = tmp_path / "data"
    if root_exists:
        root.mkdir()
    r = data_cli(*fetch_args(root, url + "/corrupt", archive.md5))
    got = hashlib.md5(served.bodies["/corrupt"]).hexdigest()
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1 and "unpacked" not in r.stdout
    assert f"MD5 {got}" in r.stderr and f"expected {archive.md5}" in r.stderr
    assert_nothing_readable(root)
    assert (os.listdir(root) == []) if root_exists else not root.exists()


def test_a_second_fetch_into_the_same_folder_is_refused(tmp_path, data_cli, server, archive):
    import fcntl

    url, served = server
    root = tmp_path / "data"
    root.mkdir()
    holder = os.open(root, os.O_RDONLY)  # as a fetch that is running holds it
    (root / ".cifar-10-python.tar.gz.part").write_bytes(b"half of it")  # and is downloading
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = data_cli(*fetch_args(root, url + "/good", archive.md5))
    finally:
        os.close(holder)
    assert r.returncode == 2 and "another fetch" in r.stderr and len(r.stderr.splitlines()) == 1
    # the running fetch's download is left alone
    assert os.listdir(root) == [".cifar-10-python.tar.gz.part"] and served.hits.get("/good", 0) == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("case", ["root is a file", "md5 not hex", "md5 too short", "unreachable", "404"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, data_cli, server, archive, case):
    url, _ = server
    root = tmp_path / "data"
    args = {"url": url + "/good", "md5": archive.md5}
    expect = {"root is a file": "not a folder", "md5 not hex": "--md5", "md5 too short": "--md5",
              "unreachable": "failed", "404": "HTTP 404"}[case]
    if case == "root is a file":
        root.write_text("a file")
    elif case.startswith("md5"):
        args["md5"] = "z" * 32 if case == "md5 not hex" else "abc123"
    elif case == "unreachable":
        args["url"] = f"http://127.0.0.1:{_closed_port()}/good"
    else:
        args["url"] = url + "/nothing-here"
    r = data_cli(*fetch_args(root, args["url"], args["md5"], "--timeout", "5"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert expect in r.stderr
    if case == "root is a file":
        assert root.read_text() == "a file"
    else:
        assert not root.exists()


def _tar(members: dict[str, bytes | str]) -> bytes:
    """A tar.gz of ``members``: bytes are regular files, a str is a symbolic link to that target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def test_only_the_expected_regular_files_are_unpacked(tmp_path, data_cli, server):
    url, served = server
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]
    members: dict[str, bytes | str] = {f"{BATCHES_DIR}/{n}": b"x" for n in names}
    members |= {f"{BATCHES_DIR}/test_batch": "/etc/passwd", f"{BATCHES_DIR}/../escaped": b"x",
                "../escaped": b"x", f"{BATCHES_DIR}/readme.html": b"x"}
    served.bodies["/odd"] = _tar(members)
    root = tmp_path / "sub" / "data"
    r = data_cli(*fetch_args(root, url + "/odd", hashlib.md5(served.bodies["/odd"]).hexdigest()))
    assert r.returncode == 2 and f"lacks {BATCHES_DIR}/test_batch" in r.stderr
    assert not (tmp_path / "sub").exists()
    assert not list(tmp_path.rglob("escaped"))


# ---------------------------------------------------------------------------------------------
# (c) an interrupted download, and (d) a machine without torch
# ---------------------------------------------------------------------------------------------


def _wait_for_bytes(path: Path, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.is_file() and path.stat().st_size > 0:
            return
        time.sleep(0.05)
    said = process.stderr.read() if process.stderr else ""
    raise AssertionError(f"{path} got no bytes (the fetch exited {process.poll()}: {said})")


def test_a_killed_download_leaves_nothing_readable_and_a_rerun_cleans_up(tmp_path, data_cli, server, archive):
    url, _ = server
    root = tmp_path / "data"
    process = subprocess.Popen(fetch_command("--root", str(root), "--url", url + "/stall", "--md5", archive.md5),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_bytes(root / PARTIAL_ARCHIVE, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    assert_nothing_readable(root)
    assert [p.name for p in leftovers(root)] == [PARTIAL_ARCHIVE]
    assert dataset_state(data_section(root)).startswith(f"CIFAR-10 missing under {root}")

    r = data_cli(*fetch_args(root, url + "/good", archive.md5))
    assert r.returncode == 0, r.stderr
    assert f"removing {PARTIAL_ARCHIVE}" in r.stdout
    assert sorted(os.listdir(root)) == [BATCHES_DIR, ARCHIVE_NAME]
    load_cifar10(root, checksums=archive.sums)


def test_fetch_needs_no_torch(tmp_path, server, archive):
    url, _ = server
    root = tmp_path / "data"
    env = {**os.environ, **hiding_env(tmp_path / "hide", {"torch", "torchvision", "nvidia.dali"},
                                          os.environ.get("PYTHONPATH", ""))}
    r = subprocess.run(fetch_command("--root", str(root), "--url", url + "/good", "--md5", archive.md5),
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    load_cifar10(root, checksums=archive.sums)


# ---------------------------------------------------------------------------------------------
# (e) validate names the data's state; the loader's message names the fetch
# ---------------------------------------------------------------------------------------------


def _validate(cli, root: Path) -> str:
    r = cli("validate", str(SMOKE), "--set", "data.source=cifar10", "--set", f"data.root={root}")
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.startswith("# data:")][-1]


def test_validate_names_the_state_of_the_data(tmp_path, cli, archive):
    root = tmp_path / "data"
    line = _validate(cli, root)
    assert line == f"# data: CIFAR-10 missing under {root}: pyramidrepro data fetch --root {root} " \
                   "(on a machine with internet)"
    write_cifar10(root, per_batch=2, test=2)
    assert _validate(cli, root) == f"# data: CIFAR-10 found under {root} (folder {BATCHES_DIR})"
    (root / BATCHES_DIR / "test_batch").unlink()
    assert "incomplete" in _validate(cli, root) and "lacks test_batch" in _validate(cli, root)
    for name in os.listdir(root / BATCHES_DIR):
        (root / BATCHES_DIR / name).unlink()
    assert _validate(cli, root) == f"# data: CIFAR-10 found under {root} (archive {ARCHIVE_NAME})"
    r = cli("validate", str(SMOKE))
    assert r.returncode == 0 and "# data: synthetic" in r.stdout.splitlines()


def test_the_missing_data_message_names_the_fetch():
    root = Path("/nowhere/data")
    with pytest.raises(DataError) as err:
        check_data_available(data_section(root))
    text = str(err.value)
    assert f"pyramidrepro data fetch --root {root}" in text and "internet" in text
    assert ARCHIVE_NAME in text and "data.source: synthetic" in text


def test_data_is_a_registered_command(cli):
    """Fails until cli/__init__.py lists ``data`` in COMMANDS."""
    r = cli("data", "fetch", "--help")
    assert r.returncode == 0 and "MD5" in r.stdout and "login node" in r.stdout
