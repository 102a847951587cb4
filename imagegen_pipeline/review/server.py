"""`imagegen review`: a small web page where people tell real from generated images and say whether generated
pictures show their prompts (stdlib http.server only).

Routes: GET / (the page), GET /api/items (pairs in a fresh random order, then prompt questions, composite prompts
first), GET /img/<id>/<left|right|picture>.png, POST /api/answer (a pair) and POST /api/prompt_answer (a prompt
question; JSON, validated strictly), GET /api/summary (`review_summary` of the SQLite file).
Every error is a JSON body with a 4xx/5xx status; a bad request never takes the server down.

Two guards keep the answers honest. A request whose `Host` is a name this server does not answer to gets 403,
so a web page cannot reach a loopback server through DNS rebinding (IP literals are fine: rebinding needs a name
the attacker controls). And the page gets a signed reviewer cookie; the database takes one answer per pair per
reviewer, so a double click, a back button or a replayed request cannot count twice in the fooling rate; the
same holds for prompt questions (one answer per picture per reviewer: a second gets 409 and the first stands).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import random
import re
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from imagegen_pipeline.pages import STYLE
from imagegen_pipeline.paths import DataPaths
from imagegen_pipeline.review.pairs import GeneratorSource, PromptQuestion, ReviewItem
from imagegen_pipeline.review.store import (Answer, DuplicateAnswer, PromptAnswer, ReviewStore, review_summary,
                                            reviews_db)
from imagegen_pipeline.net import LOOPBACK_NAMES, url_for, warn_if_exposed

MAX_BODY = 4096  # bytes; an answer is about 100
MAX_CONNECTIONS = 32  # connections served at once; a page load opens about 10
ANSWER_KEYS = frozenset({"item", "real", "prompt_match"})
PROMPT_ANSWER_KEYS = frozenset({"item", "shows"})
SIDES = ("left", "right")
PAGE_FILE = Path(__file__).with_name("page.html")
_IMG_PATH = re.compile(r"/img/([A-Za-z0-9_-]{1,64})/(left|right|picture)\.png")
COOKIE = "imagegen_reviewer"


class RequestError(Exception):
    """A client mistake: becomes a JSON error with this status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _page() -> tuple[bytes, str]:
    """page.html (with the pipeline's shared stylesheet) and a Content-Security-Policy that allows exactly its
    inline <script> and <style>."""
    html = PAGE_FILE.read_text(encoding="utf-8").replace("/* pages.STYLE */", STYLE)

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self'; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode("utf-8"), csp


@dataclass
class ReviewApp:
    """The state behind the page: pairs by id (which side is real stays here), prompt questions by id, and where
    answers go."""

    dataset: str
    source: GeneratorSource
    items: dict[str, ReviewItem]
    store: ReviewStore
    quiet: bool = False
    questions: dict[str, PromptQuestion] = field(default_factory=dict)

    def item_list(self) -> dict:
        order = list(self.items.values())
        random.SystemRandom().shuffle(order)
        asked = list(self.questions.values())
        random.SystemRandom().shuffle(asked)
        asked.sort(key=lambda q: not q.composite)  # stable: composite prompts first, each group shuffled
        return {"dataset": self.dataset, "model": self.source.description, "conditioning": self.source.conditioning,
                "items": [{"id": it.id, "prompt": it.prompt, "left": f"/img/{it.id}/left.png",
                           "right": f"/img/{it.id}/right.png"} for it in order],
                "questions": [{"id": q.id, "prompt": q.prompt, "picture": f"/img/{q.id}/picture.png"}
                              for q in asked]}

    def parse_answer(self, body: bytes, reviewer: str) -> Answer:
        """The POSTed JSON as an Answer from `reviewer`, or RequestError(400) saying what is wrong with it."""
        data = _json_object(body, ANSWER_KEYS)
        item_id, real, match = data.get("item"), data.get("real"), data.get("prompt_match")
        item = self.items.get(_item_id(item_id))
        if item is None:
            raise RequestError(400, "unknown item id")
        if not isinstance(real, str) or real not in SIDES:
            raise RequestError(400, '`real` must be "left" or "right"')
        if item.prompt is None:
            if match is not None:
                raise RequestError(400, "this item has no prompt: leave `prompt_match` out (or null)")
        elif type(match) is not bool:
            raise RequestError(400, "`prompt_match` must be true or false")
        return Answer(item_id=item.id, model_name=self.source.model_name, model_version=self.source.model_version,
                      prompt=item.prompt, seed=item.seed, real_sha256=item.real_sha256, real_side=item.real_side,
                      answer=real, prompt_match=match, reviewer=reviewer)

    def parse_prompt_answer(self, body: bytes, reviewer: str) -> PromptAnswer:
        """The POSTed JSON ({"item": id, "shows": true|false}) as a PromptAnswer, or RequestError(400)."""
        data = _json_object(body, PROMPT_ANSWER_KEYS)
        question = self.questions.get(_item_id(data.get("item")))
        if question is None:
            raise RequestError(400, "unknown prompt question id")
        if type(data.get("shows")) is not bool:
            raise RequestError(400, "`shows` must be true or false")
        return PromptAnswer(item_id=question.id, model_name=self.source.model_name,
                            model_version=self.source.model_version, prompt=question.prompt,
                            composite=question.composite, seed=question.seed, shows=data["shows"], reviewer=reviewer)

    def summary(self) -> dict:
        return {"dataset": self.dataset, "model": self.source.description,
                "model_version": self.source.model_version, **review_summary(self.store.path)}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json_object(body: bytes, allowed: frozenset[str]) -> dict:
    """The body as a JSON object with only `allowed` keys, or RequestError(400) saying what is wrong with it."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RequestError(400, f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body must be a JSON object")
    if unknown := set(data) - allowed:
        raise RequestError(400, f"unknown fields: {sorted(unknown)[:5]}; allowed: {sorted(allowed)}")
    return data


def _item_id(value) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(400, "`item` must be a non-empty string (an id from /api/items)")
    return value


class ReviewHandler(BaseHTTPRequestHandler):
    server_version = "imagegen-review"
    sys_version = ""
    timeout = 15  # seconds a client may take to send its request: a stalled one cannot hold a thread forever
    error_content_type = "application/json"

    @property
    def app(self) -> ReviewApp:
        return self.server.app  # type: ignore[attr-defined]

    # ---- responses --------------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, *, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict, *, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers=headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unsupported method, ...) as JSON too."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = ""
        self.close_connection = True
        self._json(code, {"error": message or phrase, "status": code})

    def log_message(self, format: str, *args) -> None:
        if not self.app.quiet:
            super().log_message(format, *args)

    # ---- routing ----------------------------------------------------------------------------------------------

    def _guard(self, route) -> None:
        try:
            self._check_host()
            route()
        except RequestError as exc:
            self._json(exc.status, {"error": str(exc), "status": exc.status})
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception:  # a bug must cost one request, not the server
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": "internal error (see the server log)", "status": 500})

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_HEAD(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _check_host(self) -> None:
        """403 unless `Host` is an IP literal or a name this server answers to (see the module docstring)."""
        host = self.headers.get("Host")
        if host is not None and not self.server.accepts_host(host):  # type: ignore[attr-defined]
            self.close_connection = True
            raise RequestError(403, f"Host {host[:100]!r} is not a name of this server; open "
                                    f"{self.server.url}/ (or start it with --allow-host NAME)")  # type: ignore

    def _reviewer(self) -> str | None:
        """The request's reviewer id, if its cookie carries one this server signed."""
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self.server.signed(value):  # type: ignore[attr-defined]
                return value
        return None

    def _cookie_headers(self, headers: dict) -> dict:
        """Give a browser without a (valid) reviewer cookie a new one."""
        if self._reviewer() is None:
            headers["Set-Cookie"] = (f"{COOKIE}={self.server.new_reviewer()}; Path=/; HttpOnly; "  # type: ignore
                                     "SameSite=Strict")
        return headers

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            page, csp = self.server.page  # type: ignore[attr-defined]
            self._send(200, page, "text/html; charset=utf-8",
                       headers=self._cookie_headers({"Content-Security-Policy": csp}))
        elif path == "/api/items":
            self._json(200, self.app.item_list(), headers=self._cookie_headers({}))
        elif path == "/api/summary":
            self._json(200, self.app.summary())
        elif m := _IMG_PATH.fullmatch(path):
            if m.group(2) == "picture":
                question = self.app.questions.get(m.group(1))
                if question is None:
                    raise RequestError(404, "unknown prompt question id")
                self._send(200, question.png, "image/png")
                return
            item = self.app.items.get(m.group(1))
            if item is None:
                raise RequestError(404, "unknown item id")
            self._send(200, item.left_png if m.group(2) == "left" else item.right_png, "image/png")
        else:
            raise RequestError(404, f"no such page: {path[:100]}")

    def _post(self) -> None:
        if self.path not in ("/api/answer", "/api/prompt_answer"):
            raise RequestError(404, "POST goes to /api/answer or /api/prompt_answer")
        body = self._read_body()
        reviewer = self._reviewer()
        if reviewer is None:
            raise RequestError(403, "no reviewer cookie from this server: open the review page (GET /) first")
        what = "pair" if self.path == "/api/answer" else "picture"
        try:
            if what == "pair":
                row = self.app.store.add(self.app.parse_answer(body, reviewer))
            else:
                row = self.app.store.add_prompt(self.app.parse_prompt_answer(body, reviewer))
        except DuplicateAnswer:
            raise RequestError(409, f"this {what} already has your answer (one answer per {what} per reviewer; "
                                    "the first one stands)") from None
        self._json(201, {"ok": True, "id": row})

    def _read_body(self) -> bytes:
        """At most MAX_BODY bytes of JSON with a Content-Length; anything else is refused before it is read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "send a Content-Length (chunked bodies are not accepted)")
        mime = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError(411, "Content-Length is required")
        if not length.strip().isdigit():
            self.close_connection = True
            raise RequestError(400, "bad Content-Length")
        n = int(length)
        if n > MAX_BODY:
            self._discard(n)
            raise RequestError(413, f"body over {MAX_BODY} bytes")
        body = self.rfile.read(n)
        if len(body) != n:
            self.close_connection = True
            raise RequestError(400, "body shorter than its Content-Length")
        if mime != "application/json":  # also keeps cross-site HTML forms out: they cannot send this type
            raise RequestError(415, "Content-Type must be application/json")
        return body

    def _discard(self, n: int, limit: int = 1 << 20) -> None:
        """Read and drop an oversized body (up to 1 MiB) so the client gets our error instead of a reset."""
        self.close_connection = True
        left = min(n, limit)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)


_BUSY = json.dumps({"error": "too many open connections; retry shortly", "status": 503}).encode()


class ReviewServer(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once: a flood gets an immediate 503 instead of
    a thread each (stalled clients hold theirs for at most ReviewHandler.timeout seconds)."""

    daemon_threads = True  # a hung client never blocks shutdown

    def __init__(self, address: tuple[str, int], app: ReviewApp, max_connections: int = MAX_CONNECTIONS,
                 allowed_hosts: tuple[str, ...] = ()):
        self.app = app
        self.page = _page()
        self.slots = threading.BoundedSemaphore(max_connections)
        self._secret = secrets.token_bytes(32)
        super().__init__(address, ReviewHandler)
        self.url = url_for(address[0], self.server_address[1])
        self.host_names = host_names(address[0], allowed_hosts)

    def accepts_host(self, header: str) -> bool:
        """Whether a `Host` header names this server: an IP literal, or one of `host_names`."""
        name = header.strip().lower()
        if name.startswith("["):  # [v6]:port
            name = name[1:].split("]", 1)[0]
        elif name.count(":") == 1:
            name = name.split(":", 1)[0]
        name = name.rstrip(".")
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return name in self.host_names

    def new_reviewer(self) -> str:
        token = secrets.token_urlsafe(16)
        return f"{token}.{self._sign(token)}"

    def signed(self, value: str) -> bool:
        token, _, sig = value.partition(".")
        return bool(token) and hmac.compare_digest(sig, self._sign(token))

    def _sign(self, token: str) -> str:
        return hmac.new(self._secret, token.encode(), hashlib.sha256).hexdigest()[:32]

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.setblocking(False)
                request.recv(65536)  # what already arrived: closing on unread bytes would reset, not answer
            except OSError:
                pass
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n" % len(_BUSY) + _BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def host_names(bind: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The names a `Host` header may carry for a server bound to `bind`: loopback names, the bound name, and on
    a wildcard bind this machine's names; plus `extra` (e.g. the name a reverse proxy forwards)."""
    names = set(LOOPBACK_NAMES) | {h.lower().rstrip(".") for h in extra if h}
    if bind:
        names.add(bind.lower())
    try:
        wildcard = not bind or ipaddress.ip_address(bind).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names)


def make_server(app: ReviewApp, *, host: str = "127.0.0.1", port: int = 8765,
                max_connections: int = MAX_CONNECTIONS, allowed_hosts: tuple[str, ...] = ()) -> ReviewServer:
    """Bound and ready; call serve_forever() (in a thread for tests) and shutdown()/server_close() to stop."""
    return ReviewServer((host, port), app, max_connections, allowed_hosts)


def build_app(paths: DataPaths, dataset: str, *, n: int = 40, questions: int = 16, model_uri: str | None = None,
              quiet: bool = False) -> ReviewApp:
    """Load the generator, sample real images, make n pairs and `questions` prompt questions (none for an
    unconditional model), open the answers database."""
    from imagegen_pipeline.ml.shard_reader import ShardReader
    from imagegen_pipeline.review.pairs import build_pairs, build_questions, open_generator

    source = open_generator(paths, dataset, model_uri=model_uri)
    reader = ShardReader(paths.shards(dataset))
    items = build_pairs(source, reader, n)
    asked = build_questions(source, reader, questions)
    return ReviewApp(dataset, source, {it.id: it for it in items}, ReviewStore(reviews_db(paths, dataset)), quiet,
                     {q.id: q for q in asked})


def serve_review(paths: DataPaths, dataset: str, *, host: str = "127.0.0.1", port: int = 8765, n: int = 40,
                 questions: int = 16, model_uri: str | None = None, allowed_hosts: tuple[str, ...] = ()) -> int:
    """`imagegen review`: serve until Ctrl-C."""
    warn_if_exposed(host, "the review page (anyone who can reach it can submit answers)")
    print(f"making {n} pairs for {dataset} ...", flush=True)
    app = build_app(paths, dataset, n=n, questions=questions, model_uri=model_uri)
    server = make_server(app, host=host, port=port, allowed_hosts=allowed_hosts)
    print(f"review page: {server.url}/  ({n} pairs and {len(app.questions)} prompt questions from "
          f"{app.source.description})\n"
          f"answers go to {app.store.path}; Ctrl-C stops", flush=True)
    def _terminate(signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminate)  # `kill` stops it as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    s = review_summary(app.store.path)
    print(f"\n{s['answers']} answers stored; fooling rate {s['fooling_rate']}, prompt-match rate "
          f"{s['prompt_match_rate']}")
    return 0
