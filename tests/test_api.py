"""The HTTP API of a running daemon: every endpoint, its OpenAPI description, bounds, auth.

One daemon (``python -m edged run``) serves most tests: a classification stream (the
demo's synthetic digits) and a detection stream (the SSD on a testdata image). Requests
are made as a client would: urllib, raw sockets for malformed ones.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from typing import Any, Optional

import cv2
import jsonschema
import numpy as np
import pytest
from support.client import free_port, get, non_loopback_address, raw
from support.configs import TOKEN, two_streams
from support.daemon import ROOT, Daemon
from support.wait import wait_for

pytestmark = pytest.mark.system  # every test talks to a daemon in a subprocess


@pytest.fixture(scope="module")
def api(tmp_path_factory, testdata):
    tmp = tmp_path_factory.mktemp("api")
    port = free_port()
    config = two_streams(testdata, f"127.0.0.1:{port}", device="apitest", demo_fps=20, det_fps=5)
    config["http"] = {"max_event_clients": 2}
    d = Daemon(tmp, config)
    try:
        d.wait_ready()
        yield d.base, port, d
    finally:
        d.stop()
    assert "Traceback" not in d.stderr, d.stderr


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads((ROOT / "edged/web/openapi.json").read_text())


def check(spec: dict, schema: str, obj: Any) -> None:
    """``obj`` must match ``#/components/schemas/<schema>`` of the OpenAPI description."""
    jsonschema.validate(
        obj,
        {"$ref": f"#/components/schemas/{schema}", "components": spec["components"]},
        jsonschema.Draft202012Validator,
    )


# ---------------------------------------------------------------------------- the description


def test_openapi_description_is_valid_and_covers_every_route(api, spec) -> None:
    from openapi_spec_validator import validate

    validate(spec)
    base, _, _ = api
    status, _, body = get(base, "/api/v1/openapi.json")
    assert status == 200 and json.loads(body)["paths"].keys() == spec["paths"].keys()
    # every path the handler routes is described ...
    source = (ROOT / "edged/api.py").read_text()
    routed = set(re.findall(r'path == "(/[^"]*)"', source)) | {"/"}
    routed |= {"/api/v1/streams/{id}/" + p.replace("\\.", ".") for p in ("latest", "snapshot\\.jpg")}
    assert routed <= set(spec["paths"]), routed - set(spec["paths"])
    assert "(latest|snapshot\\.jpg)" in source, "the stream routes changed: update this test"
    # ... and every described path answers (not 404) on the running daemon
    for path in spec["paths"]:
        if path == "/api/v1/events":
            continue  # endless; tested below
        status, _, _ = get(base, path.replace("{id}", "det"))
        assert status == 200, path


def test_bodies_match_the_description(api, spec) -> None:
    base, _, _ = api
    for path, schema in (("/healthz", "Health"), ("/readyz", "Ready"), ("/api/v1/status", "Status")):
        status, headers, body = get(base, path)
        assert status == 200 and headers["Content-Type"] == "application/json", (path, status)
        check(spec, schema, json.loads(body))
    for sid in ("demo", "det"):
        status, _, body = get(base, f"/api/v1/streams/{sid}/latest")
        assert status == 200
        check(spec, "Result", json.loads(body))
    status, _, body = get(base, "/api/v1/streams/nope/latest")
    assert status == 404
    check(spec, "Error", json.loads(body))
    # the schema is not a formality: a result without its stream does not pass
    with pytest.raises(jsonschema.ValidationError):
        check(
            spec,
            "Result",
            {k: v for k, v in json.loads(get(base, "/api/v1/streams/det/latest")[2]).items() if k != "stream"},
        )


def test_status_lists_streams_models_accelerators(api) -> None:
    base, _, _ = api
    st = json.loads(get(base, "/api/v1/status")[2])
    assert st["device"] == "apitest"
    assert {s["id"] for s in st["streams"]} == {"demo", "det"}
    demo = next(s for s in st["streams"] if s["id"] == "demo")
    assert demo["state"] == "running" and demo["fps"] > 5 and demo["processed"] > 0, demo
    assert {m["name"] for m in st["models"]} == {"digits_int8.tflite", "ssd_mobilenet_v1_coco_quant_postprocess.tflite"}
    cpu = next(a for a in st["accelerators"] if a["type"] == "cpu")
    assert sorted(cpu["streams"]) == ["demo", "det"]


# ---------------------------------------------------------------------------- latest, snapshot


def test_latest_result_of_each_stream(api) -> None:
    base, _, _ = api
    demo = json.loads(get(base, "/api/v1/streams/demo/latest")[2])
    assert demo["stream"] == "demo" and demo["task"] == "classification"
    assert demo["classes"] and demo["classes"][0]["label"] == demo["truth"]["label"], demo
    det = json.loads(get(base, "/api/v1/streams/det/latest")[2])
    assert det["task"] == "detection" and "kite" in {o["label"] for o in det["objects"]}, det
    later = wait_for(
        lambda: (r := json.loads(get(base, "/api/v1/streams/demo/latest")[2]))["seq"] > demo["seq"] and r,
        5,
        "a newer result",
    )
    assert later["timestamp"] > demo["timestamp"]


def test_snapshot_is_the_frame_with_its_boxes(api, testdata) -> None:
    base, _, _ = api
    status, headers, body = get(base, "/api/v1/streams/det/snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    snap = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    frame = cv2.imread(str(testdata / "images/kite_and_cold.jpg"))
    assert snap is not None and snap.shape == frame.shape
    det = json.loads(get(base, "/api/v1/streams/det/latest")[2])  # the same image each time
    diff = np.abs(snap.astype(np.int16) - frame.astype(np.int16)).max(axis=2)
    on_box = np.zeros(diff.shape, bool)
    for o in det["objects"]:
        b = {k: int(round(v)) for k, v in o["box"].items()}
        on_box[b["ymin"] : b["ymax"] + 1, max(0, b["xmin"] - 1) : b["xmin"] + 2] = True  # the left edge
    away = np.ones(diff.shape, bool)
    for o in det["objects"]:
        b = {k: int(round(v)) for k, v in o["box"].items()}
        # (and its label, above its left corner: "person #12 0.57" runs past a small box)
        away[max(0, b["ymin"] - 60) : b["ymax"] + 40, max(0, b["xmin"] - 40) : max(b["xmax"], b["xmin"] + 260) + 40] = (
            False
        )
    assert away.any(), "every pixel is near a box: choose another image"
    # drawn where the boxes are; the rest is the frame (up to JPEG's noise)
    assert np.median(diff[on_box]) > 60, np.median(diff[on_box])
    assert np.mean(diff[away]) < 6, np.mean(diff[away])
    # encoded once per frame: the same bytes again for the same result
    assert (
        get(base, "/api/v1/streams/det/snapshot.jpg")[2] == body
        or json.loads(get(base, "/api/v1/streams/det/latest")[2])["seq"] != det["seq"]
    )


# ---------------------------------------------------------------------------- events


def read_events(
    port: int,
    query: str = "",
    seconds: float = 2.0,
    token: Optional[str] = None,
    host: str = "127.0.0.1",
    enough: Optional[int] = None,
) -> list[tuple[str, dict]]:
    """The result events of ``seconds`` of /api/v1/events (or fewer: until ``enough`` have come)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", "/api/v1/events" + query, headers={"Authorization": f"Bearer {token}"} if token else {})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream", r.status
    buf, events = b"", []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and (enough is None or len(events) < enough):
        buf += r.read1(65536)
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line)
            if fields.get("event") == "result":
                data = json.loads(fields["data"])
                assert fields["id"] == f"{data['stream']}:{data['seq']}"
                events.append((fields["event"], data))
    conn.close()
    return events


def test_events_stream_results_in_order(api) -> None:
    _, port, _ = api
    events = read_events(port, seconds=2.5)
    by_stream: dict[str, list[int]] = {}
    for _, r in events:
        by_stream.setdefault(r["stream"], []).append(r["seq"])
    assert set(by_stream) == {"demo", "det"}, by_stream
    assert len(by_stream["demo"]) >= 30, len(by_stream["demo"])  # 20 fps for 2.5 s
    for seqs in by_stream.values():
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    only = read_events(port, "?stream=det", seconds=1.5)
    assert only and {r["stream"] for _, r in only} == {"det"}


def test_event_clients_are_bounded_and_queries_checked(api) -> None:
    base, port, _ = api
    assert get(base, "/api/v1/events?stream=nope")[0] == 404
    assert get(base, "/api/v1/events?foo=1")[0] == 400
    clients = lambda: json.loads(get(base, "/api/v1/status")[2])["event_clients"]  # noqa: E731
    wait_for(lambda: clients() == 0, 5, "the clients of the test before to be gone")
    conns, responses = [], []
    try:
        for _ in range(3):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/api/v1/events")
            conns.append(c)
            responses.append(c.getresponse())  # kept: a response dropped closes its socket
        # max_event_clients: 2
        assert [r.status for r in responses] == [200, 200, 503], [r.status for r in responses]
        assert b"too many event clients" in responses[2].read()
    finally:
        for r in responses:
            r.close()
        for c in conns:
            c.close()
    # a client that went away frees its place (noticed within about a second)
    wait_for(lambda: clients() == 0, 5, "the clients to be gone")
    assert read_events(port, seconds=0.5, enough=1) is not None


# ---------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    "request_bytes, code",
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET\r\n\r\n", 400),
        (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
        (b"POST /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"DELETE /api/v1/streams/demo/latest HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n", 413),
        (b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n", 400),
        (b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"GET /api/v1/streams/%00/latest HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /api/v1/streams/../status HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /api/v1/streams/" + b"d" * 65 + b"/latest HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /api/v1/events?" + b"&".join(b"stream=demo" for _ in range(40)) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ],
    ids=[
        "garbage",
        "no-path",
        "long-line",
        "long-header",
        "many-headers",
        "post",
        "delete",
        "big-body",
        "bad-length",
        "chunked",
        "nul",
        "dotdot",
        "long-id",
        "many-params",
    ],
)
def test_malformed_requests_get_a_4xx_in_json(api, request_bytes, code) -> None:
    base, port, d = api
    got, body = raw(port, request_bytes)
    assert got == code, (got, body[:200])
    assert "error" in json.loads(body), body
    assert get(base, "/healthz")[0] == 200
    assert "Traceback" not in d.stderr


# ---------------------------------------------------------------------------- the token


def small_config(listen: str, **http: Any) -> dict[str, Any]:
    return {
        "device": "authtest",
        "listen": listen,
        "http": http,
        "streams": [
            {
                "id": "demo",
                "source": {"type": "synthetic", "fps": 10},
                "model": {"path": str(ROOT / "models/digits_int8.tflite")},
                "sinks": [],
            }
        ],
    }


def test_off_loopback_without_a_token_refuses_to_start(tmp_path) -> None:
    d = Daemon(tmp_path, small_config(f"0.0.0.0:{free_port()}"), env={"EDGED_API_TOKEN": ""})
    assert d.wait(30) == 2
    err = d.stderr.strip().splitlines()
    assert len(err) == 1 and "needs an API token" in err[0] and "EDGED_API_TOKEN" in err[0], err


def test_off_loopback_the_api_rejects_unauthenticated_requests(tmp_path) -> None:
    host = non_loopback_address()
    port = free_port()
    d = Daemon(tmp_path, small_config(f"{host}:{port}", open=["/healthz"]), env={"EDGED_API_TOKEN": TOKEN})
    connect = "127.0.0.1" if host == "0.0.0.0" else host
    base = f"http://{connect}:{port}"
    assert d.base == base
    try:
        d.wait_ready(TOKEN)
        for path in ("/api/v1/status", "/readyz", "/metrics", "/api/v1/streams/demo/latest", "/api/v1/events"):
            status, headers, body = get(base, path)
            assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer"), (path, status)
            assert "bearer token" in json.loads(body)["error"]
            assert get(base, path, token="wrong-token-0123456789")[0] == 401, path
        assert get(base, "/api/v1/status", token=TOKEN)[0] == 200
        assert get(base, "/metrics", token=TOKEN)[0] == 200
        assert read_events(port, token=TOKEN, seconds=1.5, host=connect, enough=1)
        # open by configuration, and the page (a static file with no data)
        assert get(base, "/healthz")[0] == 200
        status, _, page = get(base, "/")
        assert status == 200 and b"<title>edged</title>" in page and TOKEN.encode() not in page
    finally:
        d.stop()
    assert TOKEN not in d.stderr
