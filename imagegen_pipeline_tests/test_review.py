"""`imagegen review`: people click through real/generated pairs in a browser; every answer lands in SQLite."""

from __future__ import annotations

import http.client
import io
import json
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from imagegen_pipeline.review.server import MAX_BODY, build_app, make_server
from imagegen_pipeline.review.store import review_summary, reviews_db, wilson_interval
from imagegen_pipeline.ui import free_port
from imagegen_pipeline_tests import browser
from imagegen_pipeline_tests.test_dcgan_asset import mnist_shards, train  # noqa: F401  (fixture)

needs_browser = pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing()))
N_PAIRS = 6


class ClickingBrowser(browser.Browser):
    """browser.Browser plus real WebDriver element clicks (scrolled into view, hit-tested, like a mouse)."""

    def click(self, css: str) -> None:
        found = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})
        element = next(iter(found.values()))
        self._call("POST", self._s(f"/element/{element}/click"), {})


def request(base: str, method: str, path: str, body: bytes | None = None, *,
            content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def raw(port: int, data: bytes) -> bytes:
    """Send bytes as they are (no client library fixing them up); return the whole reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.fixture
def review_server(mnist_shards, instance, mlflow_uri):
    """A tiny class-conditional generator (@candidate only: no champion yet) served with N_PAIRS pairs."""
    assert train(mnist_shards, instance).success
    app = build_app(mnist_shards, "mnist", n=N_PAIRS, quiet=True)
    server = make_server(app, port=free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_address[1]}", server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def rows(db) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM answers ORDER BY id")]
    finally:
        conn.close()


@needs_browser
def test_clicked_answers_are_stored_in_sqlite_and_counted_by_the_summary(review_server, mnist_shards, tmp_path):
    """Clicking "left/right is real" and "matches the prompt" in Chromium stores one row per pair, with the
    side that really was real, and /api/summary counts them into the fooling and prompt-match rates."""
    app, base, _ = review_server
    assert app.source.description == "imagegen-generator-mnist v1 (@candidate)"
    clicks = [("#left-real", "#match-yes"), ("#right-real", "#match-no"), ("#match-yes", "#left-real")]
    with ClickingBrowser(log=tmp_path / "chromedriver.log") as b:
        b.open(base + "/")
        b.wait_for_text("pair 1 of 6", "left is real", "matches the prompt: no", "imagegen-generator-mnist v1",
                        timeout=20)
        shown = []
        for k, (first, second) in enumerate(clicks):
            shown.append(b.script("return [document.getElementById('prompt').textContent, "
                                  "document.getElementById('left').getAttribute('src')];"))
            if k == 0:  # both images have loaded: a screenshot a person can look at
                b.script("return Promise.all([...document.images].map(i => i.decode()));")
                shot = b.screenshot(tmp_path / "review-page.png")
            b.click(first)
            b.click(second)
            b.wait_for_text(f"pair {k + 2} of 6", f"saved answer {k + 1}", timeout=10)

    stored = rows(reviews_db(mnist_shards, "mnist"))
    assert len(stored) == 3
    for row, (prompt, left_src), (first, second) in zip(stored, shown, clicks):
        item = app.items[row["item_id"]]
        assert left_src == f"/img/{item.id}/left.png" and row["prompt"] == prompt == item.prompt
        assert row["real_side"] == item.real_side  # from the server's table, never from the browser
        assert row["answer"] == ("left" if "#left-real" in (first, second) else "right")
        assert row["prompt_match"] == (1 if "#match-yes" in (first, second) else 0)
        assert (row["model_name"], row["model_version"]) == ("imagegen-generator-mnist", "1")
        assert row["prompt"] in [str(d) for d in range(10)] and row["answered_at"].endswith("+00:00")
    fooled = sum(r["answer"] != r["real_side"] for r in stored)

    status, summary = request(base, "GET", "/api/summary")
    assert status == 200 and summary["answers"] == 3 and summary["items"] == 3
    assert summary["fooled"] == fooled and summary["fooling_rate"] == round(fooled / 3, 4)
    assert summary["prompt_match_answers"] == 3 and summary["prompt_match_rate"] == round(2 / 3, 4)
    assert summary["by_model_version"]["1"]["answers"] == 3
    assert review_summary(reviews_db(mnist_shards, "mnist"), model_version="2")["answers"] == 0
    assert Image.open(shot).size[0] >= 800


def test_malformed_answers_get_json_4xx_and_the_server_keeps_serving(review_server, mnist_shards):
    """Bad JSON, wrong types, unknown ids or fields, oversized or untyped bodies: a JSON 4xx each, nothing stored,
    and a valid answer still works afterwards."""
    app, base, port = review_server
    status, listing = request(base, "GET", "/api/items")
    assert status == 200 and len(listing["items"]) == N_PAIRS
    item = listing["items"][0]
    assert item["prompt"] is not None and "real_side" not in json.dumps(listing)  # the key stays server-side
    with urllib.request.urlopen(base + item["left"], timeout=10) as resp:
        assert resp.headers["Content-Type"] == "image/png"
        assert Image.open(resp).size == (32, 32)

    good = {"item": item["id"], "real": "left", "prompt_match": True}
    bad = [
        (b"{not json", 400), (b"\xff\xfe", 400), (b"[1, 2]", 400), (b'{"item": NaN}', 400), (b"[" * 3000, 400),
        (json.dumps({**good, "item": "no-such-item"}).encode(), 400),
        (json.dumps({**good, "item": 5}).encode(), 400),
        (json.dumps({**good, "real": "middle"}).encode(), 400),
        (json.dumps({**good, "real": 0}).encode(), 400),
        (json.dumps({**good, "prompt_match": "yes"}).encode(), 400),
        (json.dumps({**good, "prompt_match": 1}).encode(), 400),  # 1 is not true
        (json.dumps({k: v for k, v in good.items() if k != "prompt_match"}).encode(), 400),
        (json.dumps({**good, "extra": 1}).encode(), 400),
        (json.dumps({**good, "pad": "x" * MAX_BODY}).encode(), 413),
    ]
    for body, expected in bad:
        status, error = request(base, "POST", "/api/answer", body)
        assert (status, error["status"]) == (expected, expected) and error["error"], (body[:60], status, error)
    assert request(base, "POST", "/api/answer", json.dumps(good).encode(), content_type="text/plain")[0] == 415
    assert request(base, "POST", "/api/elsewhere", json.dumps(good).encode())[0] == 404
    assert request(base, "GET", "/img/no-such-item/left.png")[0] == 404
    assert request(base, "PUT", "/api/answer", b"{}")[0] == 501

    no_length = raw(port, b"POST /api/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n{}")
    assert no_length.startswith(b"HTTP/1.0 411") and b'"error"' in no_length
    chunked = raw(port, b"POST /api/answer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.0 411")
    assert b'"status": 400' in raw(port, b"\x00\x01garbage\r\n\r\n")  # an HTTP/0.9 reply: no status line
    # a client that sends half a body and stalls ties up one thread until its timeout, not the server
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(b"POST /api/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")

    assert not rows(reviews_db(mnist_shards, "mnist"))
    t0 = time.monotonic()
    assert request(base, "POST", "/api/answer", json.dumps(good).encode()) == (201, {"ok": True, "id": 1})
    assert time.monotonic() - t0 < 5
    stalled.close()
    [row] = rows(reviews_db(mnist_shards, "mnist"))
    assert row["item_id"] == item["id"] and row["answer"] == "left" and row["prompt_match"] == 1
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    page = conn.getresponse()
    assert page.status == 200 and "script-src 'sha256-" in page.headers["Content-Security-Policy"]
    assert request(base, "GET", "/api/summary")[1]["answers"] == 1


def test_a_connection_flood_gets_503_at_once_and_the_server_recovers(review_server):
    """Issue 14.6: every connection got its own thread, so idle sockets could exhaust the process. Past
    max_connections a client is told 503 at once; when the idle ones go, requests are served again."""
    app, _, _ = review_server
    server = make_server(app, port=free_port(), max_connections=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        time.sleep(0.5)  # the server has accepted them, each in its thread
        status, error = request(base, "GET", "/api/summary")
        assert (status, error["status"]) == (503, 503) and "too many open connections" in error["error"]
        for s in idle:
            s.close()
        deadline = time.monotonic() + 10
        while (status := request(base, "GET", "/api/summary")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("k,n,expected", [(0, 0, None), (0, 10, [0.0, 0.2775]), (5, 10, [0.2366, 0.7634]),
                                          (10, 10, [0.7225, 1.0])])
def test_fooling_rate_interval_is_wilson(k, n, expected):
    """The 95% interval on the fooling rate stays inside [0, 1] and is sane at 0 of n and n of n."""
    assert wilson_interval(k, n) == expected


def test_summary_of_a_missing_database_is_zero_answers(tmp_path):
    """The evaluation report can call review_summary before anyone has reviewed: zeros, no file created."""
    s = review_summary(tmp_path / "reviews.sqlite")
    assert (s["answers"], s["fooling_rate"], s["by_model_version"]) == (0, None, {})
    assert not (tmp_path / "reviews.sqlite").exists()


def test_without_a_registered_model_pairs_come_from_the_exported_generator_file(mnist_shards, capsys):
    """Before anything is registered, review falls back to data/models/<dataset>/generator.safetensors and
    records the file's hash as the model version."""
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator, export_generator
    from imagegen_pipeline.ml.shard_reader import ShardReader

    names = ShardReader(mnist_shards.shards("mnist")).class_names
    cfg = DCGANConfig(ngf=8, ndf=8, conditioning="class", num_classes=len(names), extra={"class_names": names})
    export_generator(Generator(cfg), cfg, mnist_shards.models("mnist"))
    app = build_app(mnist_shards, "mnist", n=3, quiet=True)
    assert app.source.model_name == f"file:{mnist_shards.models('mnist') / 'generator.safetensors'}"
    assert len(app.source.model_version) == 16 and "using" in capsys.readouterr().err
    assert len(app.items) == 3 and {it.real_side for it in app.items.values()} <= {"left", "right"}
    for it in app.items.values():
        assert it.prompt in names and {Image.open(io.BytesIO(png)).size for png in (it.left_png, it.right_png)} == {
            (32, 32)}
