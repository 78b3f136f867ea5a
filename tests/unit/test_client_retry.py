"""The client's HTTP behaviour against a small real HTTP server (stdlib ``http.server`` on 127.0.0.1) that answers
as told: 503 + Retry-After then 200, 4xx JSON errors, streams that end with an error line, slow answers.

This tests the client (retries, back-off, exceptions, headers), not the service: the service's own answers are
exercised in tests/integration/test_client.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from sam2_serve import (AuthenticationError, ClientError, ConnectionFailed, Frame, Image, Model, Region,
                        RequestTimeout, ServiceUnavailable, StreamError)



def _predict_body() -> dict:
    return {"image_id": "abc", "width": 3, "height": 2,
            "regions": [{"mask": {"rle": {"size": [2, 3], "counts": [1, 4, 1]}}, "score": 0.9,
                         "concepts": [{"name": "1", "value": 0.9}], "box": [0, 0, 1, 1], "track_id": None}]}


class FakeService:
    """Answers each path from a script of (status, headers, body, delay_s); the last answer repeats.
    Records every request: (time, method, path, headers, body)."""

    def __init__(self):
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[tuple] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                service.requests.append((time.monotonic(), self.command, self.path, dict(self.headers), body))
                answers = service.script.get(self.path) or [(404, {}, {"error": {"code": "not_found",
                                                                                 "message": "no route"}}, 0)]
                status, headers, payload, delay = answers.pop(0) if len(answers) > 1 else answers[0]
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Content-Type", headers.get("Content-Type", "application/json"))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            do_GET = do_POST = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    service = FakeService()
    yield service
    service.close()


def _error(code: str, message: str, request_id: str = "req-1") -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


IMAGE = Image.from_numpy(np.zeros((2, 3, 3), np.uint8))


def test_503_is_retried_after_retry_after(fake):
    fake.script["/v1/predict"] = [(503, {"Retry-After": "1"}, _error("overloaded", "busy"), 0),
                                  (200, {}, _predict_body(), 0)]
    model = Model(fake.url, backoff_s=0.01)
    regions = model.predict(image=IMAGE, regions=[Region(point=[0.5, 0.5, 0.0])])
    assert len(fake.requests) == 2
    assert fake.requests[1][0] - fake.requests[0][0] >= 0.95  # waited for Retry-After, not the 10 ms back-off
    assert regions.image_id == "abc" and regions[0].score == 0.9
    assert regions[0].mask.tolist() == [[False, True, True], [True, True, False]]
    # the retried request is the same multipart upload
    first, second = (r[4].replace(r[4][:34], b"--boundary") for r in fake.requests)  # boundaries differ
    assert b'name="image"' in first and first == second


def test_503_gives_up_after_max_retries_with_backoff(fake):
    fake.script["/v1/embed"] = [(503, {"Retry-After": "0"}, _error("overloaded", "the service is at capacity"), 0)]
    model = Model(fake.url, max_retries=3, backoff_s=0.05, max_backoff_s=0.1)
    with pytest.raises(ServiceUnavailable) as info:
        model.embed(IMAGE)
    assert len(fake.requests) == 4
    err = info.value
    assert err.status == 503 and err.code == "overloaded" and err.request_id == "req-1"
    assert "the service is at capacity" in str(err) and err.retry_after_s == 0
    gaps = np.diff([r[0] for r in fake.requests])
    # back-off 0.05 * 2**k * [0.5, 1], capped at 0.1: at least 0.025, 0.05, 0.05 s
    assert gaps[0] >= 0.02 and gaps[1] >= 0.045 and gaps[2] >= 0.045


def test_503_of_non_idempotent_call_is_retried(fake):
    """A 503 means the server ran nothing, so even create_session is sent again."""
    fake.script["/v1/sessions"] = [(503, {"Retry-After": "0"}, _error("replica_unavailable", "replaced"), 0),
                                   (200, {}, {"session_id": "s.1", "width": 4, "height": 2, "num_frames": 3,
                                              "fps": 30.0, "ttl_s": 60.0}, 0)]
    session = Model(fake.url, backoff_s=0.01).create_session(b"not really a video")
    assert len(fake.requests) == 2 and session.session_id == "s.1" and session.num_frames == 3


@pytest.mark.parametrize("status, cls", [(400, ClientError), (404, ClientError), (413, ClientError),
                                         (422, ClientError), (401, AuthenticationError)])
def test_4xx_raises_at_once_with_the_servers_message(fake, status, cls):
    fake.script["/v1/predict"] = [(status, {}, _error("invalid_request", "regions.0.point: must be in [0, 1]",
                                                      "rid-7"), 0)]
    with pytest.raises(cls) as info:
        Model(fake.url, backoff_s=0.01).predict(image=IMAGE, regions=[Region(point=[2.0, 0.5, 0.0])])
    assert len(fake.requests) == 1
    err = info.value
    assert isinstance(err, ClientError)
    assert (err.status, err.code, err.message, err.request_id) == (status, "invalid_request",
                                                                    "regions.0.point: must be in [0, 1]", "rid-7")
    assert "regions.0.point: must be in [0, 1]" in str(err) and "rid-7" in str(err)


def test_non_json_error_body(fake):
    fake.script["/v1/models"] = [(502, {"Content-Type": "text/plain"}, b"bad gateway from the proxy", 0)]
    with pytest.raises(Exception) as info:
        Model(fake.url).models()
    assert info.value.status == 502 and "bad gateway from the proxy" in info.value.message


def test_api_key_header(fake, monkeypatch):
    fake.script["/v1/models"] = [(200, {}, [{"name": "m"}], 0)]
    Model(fake.url, api_key="k1").models()
    monkeypatch.setenv("SAM2_SERVE_API_KEY", "k2")
    Model(fake.url).models()
    monkeypatch.delenv("SAM2_SERVE_API_KEY")
    Model(fake.url).models()
    auth = [r[3].get("Authorization") for r in fake.requests]
    assert auth == ["Bearer k1", "Bearer k2", None]


def test_stream_yields_frames_then_raises_the_error_line(fake):
    lines = [{"index": 0, "time": 0.0, "regions": [{"track_id": "1", "mask": {"rle": {"size": [1, 2],
                                                                                       "counts": [0, 2]}},
                                                    "box": [0, 0, 1, 1], "score": 3.0}]},
             {"index": 1, "time": 0.033, "regions": []},
             {"error": {"code": "replica_unavailable", "message": "a replica stopped", "request_id": "r9"},
              "retry_after_s": 5}]
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    fake.script["/v1/generate"] = [(200, {"Content-Type": "application/x-ndjson"}, body, 0)]
    got = []
    with pytest.raises(StreamError) as info:
        for frame in Model(fake.url).generate(b"video", frames=[Frame(regions=[Region(point=[0.5, 0.5])])]):
            got.append(frame)
    assert [f.index for f in got] == [0, 1]
    assert got[0].regions[0].track_id == "1" and got[0].regions[0].mask.tolist() == [[True, True]]
    assert (info.value.code, info.value.request_id, info.value.retry_after_s) == ("replica_unavailable", "r9", 5)
    sent = fake.requests[0][4]
    assert b'"frames": [{"index": 0, "regions": [{"point": [0.5, 0.5, 0.0]}]}]' in sent


def test_client_timeout(fake):
    fake.script["/v1/models"] = [(200, {}, [], 1.0)]
    with pytest.raises(RequestTimeout, match="timeout"):
        Model(fake.url, timeout=0.2).models()
    assert len(fake.requests) == 1  # a timed-out call may have run: not sent again


def test_unreachable_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConnectionFailed, match="could not reach"):
        Model(f"http://127.0.0.1:{port}", max_retries=1, backoff_s=0.01).models()
