"""Bounded fuzzing (hypothesis) of everything that parses outside input: landing files, review answers and raw
HTTP, and generation requests (issue 14.10). Each case must end in a result or a clear error, never a crash or
a hang; `deadline` is the hang guard, set far above a normal case."""

from __future__ import annotations

import io
import json
import socket
import threading

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imagegen_pipeline.ingest.validate import IMAGE_EXTENSIONS, ValidationConfig, inspect_file
from imagegen_pipeline.review.server import ReviewApp, RequestError, make_server
from imagegen_pipeline.review.store import ReviewStore

FUZZ = settings(max_examples=150, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _seed_images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for fmt, ext, mode in [("PNG", ".png", "RGB"), ("JPEG", ".jpg", "L"), ("GIF", ".gif", "P"), ("BMP", ".bmp", "RGB"),
                           ("WEBP", ".webp", "RGB"), ("TIFF", ".tif", "RGB")]:
        im = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out.append((ext, buf.getvalue()))
    return out


SEEDS = _seed_images()


@st.composite
def damaged_image(draw) -> tuple[str, bytes]:
    """A real image file of some format with bytes flipped, cut, inserted or replaced; or plain noise."""
    ext, data = draw(st.sampled_from(SEEDS))
    ext = draw(st.sampled_from([ext, ext, *sorted(IMAGE_EXTENSIONS)]))
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "noise"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            data = data[:at]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            data = bytearray(draw(st.binary(max_size=512)))
    return ext, bytes(data)


@FUZZ
@given(case=damaged_image())
def test_the_validator_turns_any_damaged_image_into_a_row_with_a_reason(tmp_path, case):
    ext, data = case
    (tmp_path / f"f{ext}").write_bytes(data)
    row = inspect_file(str(tmp_path), f"f{ext}", ValidationConfig(max_pixels=4_000_000))
    assert isinstance(row["valid"], bool)
    if row["valid"]:
        assert row["width"] >= 8 and row["height"] >= 8 and len(row["sha256"]) == 64
    else:
        assert row["reason"].strip(), row


class _Source:
    description, conditioning, model_name, model_version = "fuzz v1", "class", "m", "1"


@pytest.fixture
def review_app(tmp_path):
    from imagegen_pipeline.review.pairs import ReviewItem

    items = {i: ReviewItem(id=i, prompt="7" if i == "a" else None, seed=1, real_sha256="0" * 64, real_side="left",
                           left_png=b"\x89PNG", right_png=b"\x89PNG") for i in ("a", "b")}
    return ReviewApp("fuzz", _Source(), items, ReviewStore(tmp_path / "r.sqlite"), quiet=True)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
                    max_leaves=12)
ANSWERISH = st.fixed_dictionaries({}, optional={"item": st.sampled_from(["a", "b", "c", ""]) | JSON,
                                                "real": st.sampled_from(["left", "right", "up"]) | JSON,
                                                "prompt_match": st.booleans() | JSON, "extra": JSON})


@FUZZ
@given(body=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode())
       | ANSWERISH.map(lambda v: json.dumps(v).encode()))
def test_any_answer_body_parses_or_gets_a_400_with_a_message(review_app, body):
    try:
        answer = review_app.parse_answer(body, "reviewer.x")
    except RequestError as exc:
        assert exc.status == 400 and str(exc)
        return
    assert answer.item_id in ("a", "b") and answer.answer in ("left", "right")
    assert (answer.prompt_match is None) == (answer.item_id == "b")


HTTP_LINE = st.sampled_from([b"GET / HTTP/1.1", b"POST /api/answer HTTP/1.1", b"GET /api/items HTTP/1.0",
                             b"GET /img/a/left.png HTTP/1.1", b"DELETE / HTTP/1.1", b"GET", b""]) | st.binary(max_size=80)
HEADER = st.sampled_from([b"Host: 127.0.0.1", b"Host: evil.example", b"Content-Type: application/json",
                          b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 99999999999",
                          b"Transfer-Encoding: chunked", b"Cookie: imagegen_reviewer=a.b", b"Cookie: ;;==;"]) \
    | st.binary(max_size=60)


@pytest.fixture
def review_port(review_app):
    server = make_server(review_app, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


@FUZZ
@given(line=HTTP_LINE, headers=st.lists(HEADER, max_size=5), body=st.binary(max_size=64))
def test_raw_http_gets_an_http_answer_and_the_review_server_keeps_serving(review_port, line, headers, body):
    with socket.create_connection(("127.0.0.1", review_port), timeout=20) as s:
        s.sendall(b"\r\n".join([line, *headers]) + b"\r\n\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply == b"" or reply.startswith(b"HTTP/1.") or b'"status": 400' in reply, reply[:200]
    with socket.create_connection(("127.0.0.1", review_port), timeout=20) as s:
        s.sendall(b"GET /api/summary HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.0 200")


@pytest.fixture(scope="module")
def generator_model():
    from imagegen_pipeline.ml.dcgan import DCGANConfig, Generator
    from imagegen_pipeline.ml.runtime import resolve_runtime
    from imagegen_pipeline.serving.generator_model import GeneratorModel

    cfg = DCGANConfig(ngf=4, ndf=4, resolution=32, conditioning="class", num_classes=3,
                      extra={"class_names": ["cat", "dog", "7"]})
    model = GeneratorModel()
    model.runtime, model.cfg, model.class_names, model.text_encoder = resolve_runtime("cpu"), cfg, ["cat", "dog", "7"], None
    model.generator = Generator(cfg).eval()
    return model


CELL = (st.none() | st.integers(-5, 5) | st.integers() | st.floats() | st.text(max_size=8)
        | st.sampled_from(["cat", "dog", "7", "2", "-1", "1e3", " 3"]))


def mostly(valid, other=CELL):
    """Valid cells nine times in ten, so that whole requests get through too."""
    return st.integers(0, 9).flatmap(lambda r: other if r == 0 else valid)


@FUZZ
@given(rows=st.lists(st.fixed_dictionaries({"seed": mostly(st.integers(0, 9)),
                                            "label": mostly(st.sampled_from(["cat", "7", "2", 1]))},
                                           optional={"count": mostly(st.integers(1, 3)), "prompt": CELL}),
                     max_size=3),
       fmt=mostly(st.sampled_from(["png", "array"]), st.sampled_from(["jpeg", None, 3])))
def test_any_generation_request_gives_images_or_a_clear_value_error(generator_model, rows, fmt):
    frame = pd.DataFrame(rows)
    try:
        out = generator_model.predict(None, frame, params={"format": fmt})
    except ValueError as exc:
        assert any(word in str(exc) for word in ("seed", "count", "label", "format", "images")), str(exc)
        return
    counts = [1 if pd.isna(c := r.get("count")) else int(c) for r in frame.to_dict("records")]
    assert len(out) == sum(counts) and (fmt == "array") == isinstance(out, np.ndarray)
