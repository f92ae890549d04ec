"""Model downloads against a local HTTP server on 127.0.0.1 (no other network).

The server supports Range / If-Range and can be told, per file and per request, to cut the
connection mid-transfer, answer 500, ignore Range, omit Content-Length, or serve other content.
"""
import hashlib
import http.server
import io
import json
import os
import socket
import threading
import zipfile

import pytest
import torch

from drseg import cli
from drseg.cli import models as cli_models
from drseg.core.models import download as dl
from drseg.core.models.catalog import ModelEntry
from drseg.core.models.checkpoints import load_state_dict
from drseg.core.errors import ModelError, RunCancelled


# ----------------------------------------------------------------------------- test server

class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.log.append({"path": self.path, "range": self.headers.get("Range"),
                            "if_range": self.headers.get("If-Range")})
            name = self.path.lstrip("/")
            plan = srv.plans.get(name) or []
            action = plan.pop(0) if plan else ""
            content = srv.files.get(name)
        if action == "500":
            return self._plain(500, b"boom")
        if content is None:
            return self._plain(404, b"not here")
        etag = '"' + hashlib.sha256(content).hexdigest()[:16] + '"'
        start = 0
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        if wanted and action != "norange" and (if_range is None or if_range == etag):
            start = int(wanted.split("=", 1)[1].split("-", 1)[0])
            if start >= len(content):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(content)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        else:
            self.send_response(200)
        body = content[start:]
        if action != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if action.startswith("cut:"):
            self.wfile.write(body[:int(action[4:])])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        for i in range(0, len(body), 64 * 1024):
            self.wfile.write(body[i:i + 64 * 1024])

    def _plain(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FileServer:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.lock = threading.Lock()
        self.httpd.files = {}
        self.httpd.plans = {}
        self.httpd.log = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def put(self, name, content, plan=()):
        self.httpd.files[name] = content
        self.httpd.plans[name] = list(plan)
        return f"{self.base}/{name}"

    @property
    def log(self):
        return self.httpd.log

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FileServer()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in (dl.CACHE_ENV, dl.MIRROR_ENV, "http_proxy", "HTTP_PROXY", "https_proxy",
                "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "cache"
    return str(path)


def _payload(n=300_000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return bytes(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8).tolist())


def _entry(url, content=None, file="weights.pth", size=True, sha=True, **kw):
    return ModelEntry(name=kw.pop("name", "test-model"), family="dino", architecture="vit_small_patch8_224",
                      url=url, file=file, licence="test", good_for="tests",
                      size=len(content) if (size and content is not None) else None,
                      sha256=hashlib.sha256(content).hexdigest() if (sha and content is not None) else None,
                      **kw)


def _state_bytes():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LayerNorm(4))
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), model.state_dict()


def _leftovers(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


# ----------------------------------------------------------------------------- downloads

def test_download_success_verifies_and_reports_progress(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content), content)
    seen = []
    path = dl.download(entry, cache, progress=lambda done, total: seen.append((done, total)))
    assert path == os.path.join(cache, "weights.pth")
    assert open(path, "rb").read() == content
    assert seen[-1] == (len(content), len(content))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert _leftovers(cache) == ["weights.pth", "weights.pth" + dl.RECORD_SUFFIX]
    record = json.load(open(path + dl.RECORD_SUFFIX))
    assert record["sha256"] == hashlib.sha256(content).hexdigest()
    assert dl.cached_path(entry, cache) == path
    # a second call uses the cache: no new request
    requests = len(server.log)
    assert dl.download(entry, cache) == path
    assert len(server.log) == requests


def test_resume_after_cut_connection_on_next_call(server, cache):
    content = _payload()
    cut = 100_000
    entry = _entry(server.put("weights.pth", content, plan=[f"cut:{cut}"]), content)
    with pytest.raises(ModelError, match="interrupted.*resume"):
        dl.download(entry, cache, retries=0)
    part = os.path.join(cache, "weights.pth" + dl.PART_SUFFIX)
    assert os.path.getsize(part) == cut
    assert not os.path.exists(os.path.join(cache, "weights.pth"))
    path = dl.download(entry, cache, retries=0)
    assert server.log[-1]["range"] == f"bytes={cut}-"
    assert server.log[-1]["if_range"]  # guarded by the ETag seen on the first request
    assert open(path, "rb").read() == content
    assert not os.path.exists(part)


def test_resume_within_one_call(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content, plan=["cut:70000", "cut:90000"]), content)
    messages = []
    path = dl.download(entry, cache, retries=3, retry_wait=0, status=messages.append)
    assert open(path, "rb").read() == content
    assert [r["range"] for r in server.log] == [None, "bytes=70000-", "bytes=160000-"]
    assert sum("resuming" in m for m in messages) == 2


def test_changed_file_on_server_restarts_instead_of_mixing(server, cache):
    old, new = _payload(seed=1), _payload(seed=2)
    url = server.put("weights.pth", old, plan=["cut:50000"])
    with pytest.raises(ModelError):
        dl.download(url, cache, retries=0)
    server.put("weights.pth", new)
    path = dl.download(url, cache, retries=0, sha256=hashlib.sha256(new).hexdigest())
    assert server.log[-1]["range"] == "bytes=50000-"
    assert open(path, "rb").read() == new


def test_server_ignoring_range_restarts_cleanly(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content, plan=["cut:40000", "norange"]), content)
    path = dl.download(entry, cache, retries=1, retry_wait=0)
    assert open(path, "rb").read() == content


def test_complete_part_file_answered_416_is_finished(server, cache):
    content = _payload()
    url = server.put("weights.pth", content)
    os.makedirs(cache)
    with open(os.path.join(cache, "weights.pth" + dl.PART_SUFFIX), "wb") as handle:
        handle.write(content)
    path = dl.download(url, cache)
    assert server.log[-1]["range"] == f"bytes={len(content)}-"
    assert open(path, "rb").read() == content


def test_wrong_hash_is_rejected_and_nothing_kept(server, cache):
    content = _payload()
    wrong = bytearray(content)
    wrong[1234] ^= 0xFF
    entry = _entry(server.put("weights.pth", bytes(wrong)), content)
    with pytest.raises(ModelError, match="SHA-256.*deleted"):
        dl.download(entry, cache)
    assert _leftovers(cache) == []
    assert dl.cached_path(entry, cache) is None


def test_wrong_size_announced_is_rejected_before_transfer(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content + b"extra"), content)
    with pytest.raises(ModelError, match=f"offers {len(content) + 5} bytes.*should have {len(content)}"):
        dl.download(entry, cache)
    assert _leftovers(cache) == []


def test_wrong_size_without_content_length_is_caught_at_the_end(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content[:-10], plan=["nolength"]), content)
    with pytest.raises(ModelError, match=f"has {len(content) - 10} bytes but should have {len(content)}"):
        dl.download(entry, cache)
    assert _leftovers(cache) == []


def test_server_errors_are_reported_clearly(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content, plan=["500"]), content)
    with pytest.raises(ModelError, match="answered HTTP 500.*try again later"):
        dl.download(entry, cache)
    missing = _entry(server.base + "/nothing.pth", content, file="nothing.pth")
    with pytest.raises(ModelError, match="HTTP 404.*models import test-model"):
        dl.download(missing, cache)
    assert _leftovers(cache) == []


def test_unreachable_server_is_reported(cache):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    entry = _entry(f"http://127.0.0.1:{port}/w.pth", b"x" * 10, file="w.pth")
    with pytest.raises(ModelError, match="Could not reach 127.0.0.1"):
        dl.download(entry, cache)


def test_html_page_instead_of_weights_is_rejected(server, cache):
    # no published hash: the content check is what catches a login or error page
    entry = _entry(server.put("weights.pth", b"<!DOCTYPE html><html>Sign in</html>"), None)
    with pytest.raises(ModelError, match="web page"):
        dl.download(entry, cache)
    assert _leftovers(cache) == []


def test_cancellation_keeps_partial_file_for_resume(server, cache):
    content = _payload(1_000_000)
    entry = _entry(server.put("weights.pth", content), content)
    calls = []

    def progress(done, total):
        calls.append(done)

    with pytest.raises(RunCancelled):
        dl.download(entry, cache, progress=progress, cancelled=lambda: len(calls) >= 2,
                    chunk_size=64 * 1024)
    part = os.path.join(cache, "weights.pth" + dl.PART_SUFFIX)
    kept = os.path.getsize(part)
    assert 0 < kept < len(content)
    path = dl.download(entry, cache)
    assert server.log[-1]["range"] == f"bytes={kept}-"
    assert open(path, "rb").read() == content


def test_mirror_serves_the_same_file_names(server, cache, monkeypatch):
    content = _payload()
    server.put("mirror/weights.pth", content)
    entry = _entry(server.base + "/origin/weights.pth", content)  # the origin would 404
    path = dl.download(entry, cache, mirror=server.base + "/mirror/")
    assert server.log[-1]["path"] == "/mirror/weights.pth"
    assert open(path, "rb").read() == content
    # without a mirror given, the environment variable's is used; a mirror given wins over it
    os.remove(path)
    server.put("envmirror/weights.pth", content)
    monkeypatch.setenv(dl.MIRROR_ENV, server.base + "/envmirror")
    monkeypatch.setenv("DRSEG_CONFIG", os.path.join(cache, "no-settings.json"))
    dl.download(entry, cache)
    assert server.log[-1]["path"] == "/envmirror/weights.pth"
    os.remove(path)
    dl.download(entry, cache, mirror=server.base + "/mirror")
    assert server.log[-1]["path"] == "/mirror/weights.pth"
    assert dl.source_url(entry) == server.base + "/envmirror/weights.pth"


def test_mirror_makes_entries_without_public_url_downloadable(server, cache):
    content, _ = _state_bytes()
    entry = _entry(None, content, file="private.pth", sha=False, size=False)
    with pytest.raises(ModelError, match="no public download link.*models import"):
        dl.download(entry, cache)
    server.put("private.pth", content)
    path = dl.download(entry, cache, mirror=server.base)
    assert open(path, "rb").read() == content


def test_cache_dir_given_beats_env_which_beats_the_default(monkeypatch, tmp_path):
    # One precedence for every front end (settings.resolve): parameter > environment > saved > default.
    monkeypatch.setenv("DRSEG_CONFIG", str(tmp_path / "no-settings.json"))
    monkeypatch.setenv(dl.CACHE_ENV, str(tmp_path / "from-env"))
    assert dl.resolve_cache_dir(str(tmp_path / "given")) == str(tmp_path / "given")
    assert dl.resolve_cache_dir(None) == str(tmp_path / "from-env")
    monkeypatch.delenv(dl.CACHE_ENV)
    assert dl.resolve_cache_dir(str(tmp_path / "given")) == str(tmp_path / "given")
    assert dl.resolve_cache_dir(None) == dl.default_cache_dir()
    assert dl.default_cache_dir().endswith(os.path.join("drseg", "models"))


def test_archive_entry_is_extracted_and_loadable(server, cache):
    checkpoint, state = _state_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("Sky_B32/epoch_20.pt", checkpoint)
        archive.writestr("Sky_B32/params.txt", "lr=1e-9")
    blob = buf.getvalue()
    entry = _entry(server.put("Sky_B32.zip", blob), blob, file="Sky_B32_epoch_20.pt",
                   archive="Sky_B32.zip", archive_member="Sky_B32/epoch_20.pt")
    path = dl.download(entry, cache)
    assert path == os.path.join(cache, "Sky_B32_epoch_20.pt")
    assert _leftovers(cache) == ["Sky_B32_epoch_20.pt", "Sky_B32_epoch_20.pt" + dl.RECORD_SUFFIX]
    loaded = load_state_dict(path)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    result = dl.verify_cached(entry, cache)
    assert result.ok and "record" in result.message


# ----------------------------------------------------------------------------- cache and import

def test_cached_path_and_verify_detect_damage(server, cache):
    content = _payload()
    entry = _entry(server.put("weights.pth", content), content)
    assert dl.cached_path(entry, cache) is None
    path = dl.download(entry, cache)
    assert dl.verify_cached(entry, cache).ok
    with open(path, "r+b") as handle:  # same size, one flipped byte
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 1]))
    assert dl.cached_path(entry, cache) == path  # quick check: sizes only
    assert dl.cached_path(entry, cache, verify=True) is None
    assert "SHA-256" in dl.verify_cached(entry, cache).message
    with open(path, "ab") as handle:
        handle.write(b"more")
    assert dl.cached_path(entry, cache) is None


def test_verify_without_published_hash_uses_download_record(server, cache):
    content, _ = _state_bytes()
    entry = _entry(server.put("weights.pth", content), content, sha=False, size=False)
    path = dl.download(entry, cache)
    result = dl.verify_cached(entry, cache)
    assert result.ok and "record made when it was downloaded" in result.message
    with open(path, "r+b") as handle:
        handle.seek(len(content) // 2)
        handle.write(b"\x00\x01\x02")
    assert not dl.verify_cached(entry, cache).ok


def test_import_file_verifies_and_copies(tmp_path, cache):
    content = _payload()
    entry = _entry("https://example.invalid/weights.pth", content)
    source = tmp_path / "downloaded-by-hand.pth"
    source.write_bytes(content)
    path = dl.import_file(str(source), entry, cache)
    assert path == os.path.join(cache, "weights.pth")
    assert open(path, "rb").read() == content
    assert source.read_bytes() == content  # the user's file is untouched
    assert dl.cached_path(entry, cache, verify=True) == path


def test_import_file_rejects_wrong_file_and_keeps_nothing(tmp_path, cache):
    content = _payload()
    entry = _entry("https://example.invalid/weights.pth", content)
    source = tmp_path / "other.pth"
    source.write_bytes(content[:-1] + b"!")
    with pytest.raises(ModelError, match="not the expected file.*SHA-256.*Nothing was imported"):
        dl.import_file(str(source), entry, cache)
    assert _leftovers(cache) == []
    assert source.exists()
    html = tmp_path / "page.pth"
    html.write_bytes(b"<html>login</html>")
    with pytest.raises(ModelError, match="web page"):
        dl.import_file(str(html), _entry(None, None), cache)
    assert _leftovers(cache) == []


# ----------------------------------------------------------------------------- command line

def test_cli_download_and_verify(server, cache, monkeypatch, capsys):
    content = _payload()
    entry = _entry(server.put("weights.pth", content), content, name="tiny-model")
    monkeypatch.setattr(cli_models, "get_model", lambda name: entry)
    monkeypatch.setattr(dl, "get_model", lambda name: entry)
    monkeypatch.setattr(cli_models, "list_models", lambda family=None: [entry])
    assert cli.main(["models", "download", "tiny-model", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    assert "tiny-model" in out and "size and SHA-256 verified" in out
    assert cli.main(["models", "--cache-dir", cache, "verify"]) == 0
    assert "tiny-model: ok" in capsys.readouterr().out
    with open(os.path.join(cache, "weights.pth"), "r+b") as handle:
        handle.write(b"\xff\xfe")
    assert cli.main(["models", "verify", "tiny-model", "--cache-dir", cache]) == 1
    assert "tiny-model: FAILED" in capsys.readouterr().out


def test_cli_reports_server_error_with_exit_code_2(server, cache, monkeypatch, capsys):
    content = _payload()
    entry = _entry(server.put("weights.pth", content, plan=["500"]), content, name="tiny-model")
    monkeypatch.setattr(cli_models, "get_model", lambda name: entry)
    monkeypatch.setattr(dl, "get_model", lambda name: entry)
    assert cli.main(["models", "download", "tiny-model", "--cache-dir", cache, "--quiet"]) == 2
    assert "HTTP 500" in capsys.readouterr().err


def test_cache_and_mirror_follow_the_saved_settings_unless_the_environment_says(tmp_path, monkeypatch):
    """The CLI and Processing use the folder and mirror chosen on the settings page."""
    from drseg.core.models.download import resolve_cache_dir, resolve_mirror
    from drseg.core.settings import Settings, save_settings

    config = tmp_path / "settings.json"
    save_settings(Settings(cache_dir=str(tmp_path / "models"), mirror_url="http://127.0.0.1:9/m"),
                  str(config))
    monkeypatch.setenv("DRSEG_CONFIG", str(config))
    monkeypatch.delenv("DRSEG_CACHE_DIR", raising=False)
    monkeypatch.delenv("DRSEG_MODEL_MIRROR", raising=False)
    assert resolve_cache_dir() == str(tmp_path / "models")
    assert resolve_mirror() == "http://127.0.0.1:9/m"
    assert resolve_cache_dir(str(tmp_path / "given")) == str(tmp_path / "given")
    monkeypatch.setenv("DRSEG_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == str(tmp_path / "env")


def test_two_runs_asking_at_once_download_once(server, cache):
    """The dock and a Processing run (two threads) asking for the same missing model: one transfer;
    the second waits for it and gets the verified file (not a second writer on the same .part)."""
    content = _payload(2_000_000)
    entry = _entry(server.put("weights.pth", content), content)
    results, errors = [], []
    start = threading.Barrier(2)

    def run():
        try:
            start.wait()
            results.append(dl.download(entry, cache, chunk_size=4096))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert results == [os.path.join(cache, "weights.pth")] * 2
    assert open(results[0], "rb").read() == content
    assert len(server.log) == 1
    assert _leftovers(cache) == ["weights.pth", "weights.pth" + dl.RECORD_SUFFIX]


def test_waiting_behind_another_download_is_cancellable_and_other_models_do_not_wait(server, cache):
    content = _payload(10_000)
    entry = _entry(server.put("weights.pth", content), content)
    other = _entry(server.put("other.pth", content), content, file="other.pth", name="other")
    final = os.path.join(cache, "weights.pth")
    os.makedirs(cache)
    with dl._destination_lock(final, lambda: None):          # another run is downloading it
        assert dl.download(other, cache) == os.path.join(cache, "other.pth")   # not held up
        asked, said = [], []

        def cancelled():
            asked.append(True)
            return len(asked) > 2

        with pytest.raises(RunCancelled, match="Waiting for the download of 'test-model'"):
            dl.download(entry, cache, cancelled=cancelled, status=said.append)
        assert said == ["Waiting for another download of 'test-model' to finish"]
        assert not os.path.exists(final)
    assert dl.download(entry, cache) == final                 # the lock was released
    assert open(final, "rb").read() == content
