"""`imagegen review`: people click through real/generated pairs in a browser; every answer lands in SQLite."""

from __future__ import annotations

import http.client
import http.cookiejar
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
from imagegen_pipeline.review.store import (Answer, DuplicateAnswer, ReviewStore, review_summary, reviews_db,
                                            wilson_interval)
from imagegen_pipeline.net import free_port
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


BROWSER = http.cookiejar.CookieJar()  # the reviewer cookie, as a browser keeps it


def request(base: str, method: str, path: str, body: bytes | None = None, *, content_type: str = "application/json",
            jar: http.cookiejar.CookieJar = BROWSER, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=body, method=method,
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)).open(req, timeout=10) as resp:
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


def rows(db, table: str = "answers") -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()


@pytest.mark.slow
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
                b.script("return Promise.all(['left', 'right'].map(i => document.getElementById(i).decode()));")
                shot = b.screenshot(tmp_path / "review-page.png")
            b.click(first)
            b.click(second)
            b.wait_for_text(f"pair {k + 2} of 6", f"saved answer {k + 1}", timeout=10)
        for k in range(3, 6):  # the other pairs, then the first prompt question (issue 27.4)
            b.click("#left-real")
            b.click("#match-yes")
            b.wait_for_text(f"saved answer {k + 1}", timeout=10)
        b.wait_for_text("picture 1 of 16", "Does this picture show:", timeout=10)
        asked = b.script("return document.getElementById('question-prompt').textContent;")
        b.click("#shows-no")
        b.wait_for_text("picture 2 of 16", "saved picture 1", timeout=10)

    stored = rows(reviews_db(mnist_shards, "mnist"))
    assert len(stored) == 6
    [picture] = rows(reviews_db(mnist_shards, "mnist"), "prompt_answers")
    assert (picture["prompt"], picture["shows"], picture["composite"]) == (asked, 0, 0)  # a class model: a label
    assert asked in [str(d) for d in range(10)] and picture["reviewer"] == stored[0]["reviewer"]
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
    assert status == 200 and summary["answers"] == 6 and summary["items"] == 6
    assert summary["fooled"] == fooled and summary["fooling_rate"] == round(fooled / 6, 4)
    # prompt match: 2 of the first 3 pairs, all 3 others, and the picture's no
    assert summary["prompt_match_answers"] == 7 and summary["prompt_match_rate"] == round(5 / 7, 4)
    assert summary["by_model_version"]["1"]["answers"] == 6
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

    no_length = raw(port, b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\n\r\n{}")
    assert no_length.startswith(b"HTTP/1.0 411") and b'"error"' in no_length
    chunked = raw(port, b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"2\r\n{}\r\n0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.0 411")
    assert b'"status": 400' in raw(port, b"\x00\x01garbage\r\n\r\n")  # an HTTP/0.9 reply: no status line
    # a client that sends half a body and stalls ties up one thread until its timeout, not the server
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(b"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{")

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


def test_a_host_name_the_server_does_not_answer_to_gets_403(review_server, mnist_shards):
    """Issue 14.7: DNS rebinding. A page on rebind.example whose name the attacker points at 127.0.0.1 sends
    `Host: rebind.example`; it got 200. Now every route answers 403 to that name, before reading anything, while
    loopback names, IP literals and names given with allowed_hosts still work."""
    app, base, port = review_server
    for path in ("/", "/api/items", "/api/summary", "/img/x/left.png"):
        status, error = request(base, "GET", path, headers={"Host": f"rebind.example:{port}"})
        assert status == 403 and "rebind.example" in error["error"] and "--allow-host" in error["error"], path
    with urllib.request.build_opener(urllib.request.HTTPCookieProcessor(BROWSER)).open(base + "/") as page:
        assert page.status == 200  # a real page load: the reviewer cookie is set
    item = next(iter(app.items))
    body = json.dumps({"item": item, "real": "left", "prompt_match": True}).encode()
    assert request(base, "POST", "/api/answer", body, headers={"Host": "rebind.example"})[0] == 403
    assert not rows(reviews_db(mnist_shards, "mnist"))
    for host in (f"localhost:{port}", "LOCALHOST.", f"127.0.0.1:{port}", f"[::1]:{port}", "10.1.2.3"):
        assert request(base, "GET", "/api/summary", headers={"Host": host})[0] == 200, host
    proxied = make_server(app, port=free_port(), allowed_hosts=("review.team.example",))
    assert proxied.accepts_host("review.team.example:443") and not proxied.accepts_host("rebind.example")
    proxied.server_close()


def test_each_reviewer_answers_a_pair_once(review_server, mnist_shards):
    """Issue 14.7: one client could answer one pair any number of times, and each answer fed the fooling rate.
    An answer now needs the signed cookie the page sets; a second answer to the same pair from it gets 409 and
    is not stored; another browser still counts; a made-up cookie gets 403."""
    app, base, _ = review_server
    item = next(iter(app.items))
    body = json.dumps({"item": item, "real": "left", "prompt_match": True}).encode()
    first, second = http.cookiejar.CookieJar(), http.cookiejar.CookieJar()
    status, error = request(base, "POST", "/api/answer", body, jar=first)
    assert status == 403 and "open the review page" in error["error"]
    forged = request(base, "POST", "/api/answer", body, jar=first,
                     headers={"Cookie": "imagegen_reviewer=abc.0123456789abcdef0123456789abcdef"})
    assert forged[0] == 403
    for jar in (first, second):
        assert request(base, "GET", "/api/items", jar=jar)[0] == 200
    assert request(base, "POST", "/api/answer", body, jar=first)[0] == 201
    for _ in range(3):
        status, error = request(base, "POST", "/api/answer", body, jar=first)
        assert status == 409 and "already has your answer" in error["error"]
    assert request(base, "POST", "/api/answer", body, jar=second)[0] == 201
    stored = rows(reviews_db(mnist_shards, "mnist"))
    assert len(stored) == 2 and len({r["reviewer"] for r in stored}) == 2
    assert request(base, "GET", "/api/summary")[1]["answers"] == 2


def test_a_version_1_answers_file_gains_the_reviewer_column_and_keeps_its_rows(tmp_path):
    """Answers stored before reviewers existed stay (reviewer NULL) and are still counted."""
    db = tmp_path / "reviews.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(ReviewStoreV1)
    conn.execute("INSERT INTO answers (item_id, model_name, model_version, prompt, seed, real_side, answer, "
                 "answered_at) VALUES ('a', 'm', '1', NULL, 0, 'left', 'right', '2026-01-01T00:00:00+00:00')")
    conn.commit()
    conn.close()
    store = ReviewStore(db)
    store.add(Answer("a", "m", "1", None, 1, None, "left", "left", None, reviewer="r.x"))
    with pytest.raises(DuplicateAnswer):
        store.add(Answer("a", "m", "1", None, 2, None, "left", "left", None, reviewer="r.x"))
    assert [r["reviewer"] for r in rows(db)] == [None, "r.x"]
    assert review_summary(db)["answers"] == 2 and review_summary(db)["fooled"] == 1


ReviewStoreV1 = """CREATE TABLE answers (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL, model_name TEXT NOT NULL,
    model_version TEXT NOT NULL, prompt TEXT, seed INTEGER NOT NULL, real_sha256 TEXT, real_side TEXT NOT NULL,
    answer TEXT NOT NULL, prompt_match INTEGER, answered_at TEXT NOT NULL);"""


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
