"""The HTTP API's door: the bearer token on every spelling of a decision path, hostile bodies.

In process through ``falcon.testing`` (fast, every spelling) and against a real ``eximauthd
serve`` with raw HTTP bytes, because uvicorn decodes and normalizes the request target
differently from the test client.  "Nothing decided" is proved by the service's own count of
decisions (the ``eximauthd_requests_total`` counter) and, for the subprocess, its decision log.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import falcon.testing
import pytest

from eximauthd.errors import ConfigError
from eximauthd.service.http import create_app
from eximauthd.service.metrics import Metrics
from eximauthd.service.server import Service

from .. import servicekit as kit
from ..support import PASSWORD, config_for, populate

TOKEN = "test-token-0123456789abcdefghij"
AUTH_BODY = {"username": "alice@example.test", "password": PASSWORD}
RELAY_BODY = {"authenticated_id": "alice@example.test", "sender": "alice@example.test",
              "recipient": "r@remote.test"}
BODIES = {"auth": AUTH_BODY, "relay": RELAY_BODY}

# Spellings of /v1/{verb} a router or a server might map to the resource (test client: the
# path must start with "/", and percent escapes are decoded as uvicorn does).
SPELLINGS = [
    "/v1/{v}", "//v1/{v}", "///v1/{v}", "/v1//{v}", "//v1//{v}", "/v1/{v}/", "/v1/{v}//",
    "/v1/./{v}", "/./v1/{v}", "/v1/../v1/{v}", "/x/../v1/{v}", "/V1/{v}", "/v1/{V}",
    "/v1/{pct}", "/%76%31/{v}", "/v1%2F{v}", "/v1%2f{v}", "/v1/{v}%2F", "/v1/{v}?x=1",
    "/v1/{v}?", "/v1/{v};x=1", "/v1/{v}%20", "/v1/{v}%00", "/v1/{v}%0a", "/v1/{v}.json",
    f"/v1/{{v}}?access_token={TOKEN}",
]
BAD_AUTHORIZATION: list[list[tuple[str, str]]] = [
    [],
    [("Authorization", "Bearer wrong-token-0123456789abcdefghij")],
    [("Authorization", "Bearer ")],
    [("Authorization", "Bearer")],
    [("Authorization", f"Basic {TOKEN}")],
    [("Authorization", TOKEN)],
    [("Authorization", f"Bearer {TOKEN[:-1]}")],
    [("Authorization", f"Bearer {TOKEN}x")],
    [("Authorization", f"Bearer {TOKEN},Bearer {TOKEN}")],
    [("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")],
    [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {TOKEN}")],
    [("X-Authorization", f"Bearer {TOKEN}")],
]


def _spell(template: str, verb: str) -> str:
    return template.format(v=verb, V=verb.upper(), pct=f"%{ord(verb[0]):02x}{verb[1:]}")


def http_decisions(metrics: Metrics) -> float:
    """Decisions the service made for HTTP requests, from its own counter."""
    return sum(sample.value for metric in metrics.requests.collect()
               for sample in metric.samples
               if sample.name.endswith("_total") and sample.labels["transport"] == "http")


@pytest.fixture
def service(sqlite_url: str) -> Iterator[Service]:
    """An in-process service on a populated SQLite database (the door does not touch storage)."""
    populate(sqlite_url)
    svc = Service(config_for(sqlite_url))
    yield svc
    svc.decider.close()


@pytest.fixture
def client(service: Service) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(service, TOKEN))


def _bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestTokenOnEveryRoute:
    """No spelling of a decision path reaches a decision without the token."""

    @pytest.mark.parametrize("verb", ["auth", "relay"])
    def test_no_spelling_decides_without_the_token(self, client: falcon.testing.TestClient,
                                                   service: Service, verb: str) -> None:
        """Every spelling, with no token or a wrong one, is refused and nothing is decided."""
        for template in SPELLINGS:
            path, _, query = _spell(template, verb).partition("?")
            for headers in BAD_AUTHORIZATION:
                # A list, not json=: the test client would fold repeated headers into a dict.
                result = client.simulate_post(
                    path, query_string=query or None, body=json.dumps(BODIES[verb]),
                    headers=[("Content-Type", "application/json"), *headers])
                assert result.status_code in {401, 404}, (path, headers, result.status_code)
                assert "result" not in result.text
        assert http_decisions(service.metrics) == 0
        # The counter does count: the canonical path and the router's "//" alias, with the token.
        for path in (f"/v1/{verb}", f"//v1/{verb}"):
            result = client.simulate_post(path, json=BODIES[verb], headers=_bearer())
            assert (result.status_code, result.json["result"]) == (200, "yes")
        assert http_decisions(service.metrics) == 2

    @pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"])
    def test_other_methods_need_the_token_too(self, client: falcon.testing.TestClient,
                                              service: Service, method: str) -> None:
        """Any method on a decision route is 401 without the token, even the default OPTIONS."""
        for path in ("/v1/auth", "//v1/relay"):
            result = client.simulate_request(method, path, json=AUTH_BODY)
            assert result.status_code == 401
            assert result.headers["WWW-Authenticate"] == "Bearer"
        assert http_decisions(service.metrics) == 0

    @pytest.mark.parametrize("header", [
        f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}", f"Bearer {TOKEN} ",
        f" Bearer {TOKEN}\t",
    ])
    def test_scheme_case_and_surrounding_space_are_tolerated(
            self, client: falcon.testing.TestClient, header: str) -> None:
        """The auth scheme is case-insensitive (RFC 7235) and whitespace around it is OWS."""
        result = client.simulate_post("/v1/auth", json=AUTH_BODY,
                                      headers={"Authorization": header})
        assert (result.status_code, result.json["result"]) == (200, "yes")

    def test_unknown_routes_say_nothing(self, client: falcon.testing.TestClient,
                                        service: Service) -> None:
        """An unknown path is the router's plain 404, with or without a token, and decides
        nothing."""
        for path in ("/v1/other", "/v2/auth", "/v1/auth/x", "/v1", "/", "/admin", "/v1/AUTH"):
            for headers in ({}, _bearer()):
                result = client.simulate_post(path, json=AUTH_BODY, headers=headers)
                assert result.status_code == 404
                assert result.json == {"title": "404 Not Found"}
        assert http_decisions(service.metrics) == 0

    def test_health_ready_metrics_stay_open(self, client: falcon.testing.TestClient) -> None:
        """Health, readiness and metrics need no token (they carry no user data)."""
        assert client.simulate_get("/healthz").status_code == 200
        assert client.simulate_get("/readyz").json == {"status": "ready", "reason": "ready"}
        client.simulate_post("/v1/auth", json=AUTH_BODY, headers=_bearer())
        metrics = client.simulate_get("/metrics")
        assert metrics.status_code == 200
        assert "alice" not in metrics.text

    def test_an_empty_token_is_refused(self, service: Service) -> None:
        """The app cannot be built without a token ("Bearer " must never match)."""
        with pytest.raises(ConfigError):
            create_app(service, "")


HOSTILE_BODIES: list[tuple[str, bytes, int]] = [
    ("nested-arrays", b"[" * 8000 + b"]" * 8000, 400),
    ("nested-arrays-20000", b"[" * 20000 + b"]" * 20000, 413),
    ("nested-arrays-unclosed", b"[" * 16000, 400),
    ("nested-objects", b'{"":' * 3000 + b"1" + b"}" * 3000, 400),
    ("nested-in-a-field", b'{"username": ' + b"[" * 6000 + b"]" * 6000 + b', "password": "x"}',
     400),
    ("huge-float", b'{"username": 1e999999, "password": "x"}', 400),
    ("huge-float-top", b"1e999999", 400),
    ("huge-negative-float", b'{"username": "a@b.test", "password": -1e999999}', 400),
    ("long-int", b'{"username": "a@b.test", "password": ' + b"9" * 5000 + b"}", 400),
    ("100k-digit-int", b"9" * 100_000, 413),
    ("nan", b'{"username": "a@b.test", "password": NaN}', 400),
    ("infinity", b'{"username": "a@b.test", "password": Infinity}', 400),
    ("minus-infinity-top", b"-Infinity", 400),
    ("invalid-utf8", b'{"username": "alice@example.test\xff", "password": "x"}', 400),
    ("utf16", json.dumps(AUTH_BODY).encode("utf-16"), 400),
    ("utf8-bom", b"\xef\xbb\xbf" + json.dumps(AUTH_BODY).encode(), 400),
    ("duplicate-key", b'{"username": "bob@example.test", "username": "alice@example.test", '
                      b'"password": ' + json.dumps(PASSWORD).encode() + b"}", 400),
    ("lone-surrogate", b'{"username": "alice@example.test", "password": "\\ud800"}', 400),
    ("empty", b"", 400),
    ("null", b"null", 400),
    ("string", b'"x"', 400),
    ("trailing-garbage", json.dumps(AUTH_BODY).encode() + b"x", 400),
]


class TestHostileBodies:
    """A hostile body is a 4xx, never a 500, never a decision."""

    @pytest.mark.parametrize(("body", "status"), [(b, s) for _, b, s in HOSTILE_BODIES],
                             ids=[name for name, _, _ in HOSTILE_BODIES])
    def test_hostile_body_is_refused(self, client: falcon.testing.TestClient,
                                     service: Service, body: bytes, status: int) -> None:
        """Deep nesting, huge or non-finite numbers, bad encodings, duplicate keys: 400/413."""
        for path in ("/v1/auth", "/v1/relay"):
            result = client.simulate_post(path, body=body, headers=_bearer())
            assert result.status_code == status, (path, result.text)
        assert http_decisions(service.metrics) == 0


# --- against the real listener --------------------------------------------------------------

def _raw(served: kit.Served, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes to the HTTP listener; (status, body) of its answer (0: no answer)."""
    host, port = served.http_url.removeprefix("http://").split(":")
    chunks = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # A server refusing an oversized request answers and closes while we still send:
        # keep whatever it said before the reset.
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    answer = b"".join(chunks)
    if not answer:
        return 0, b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _request(method: str, target: str, body: bytes = b"",
             headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


RAW_SPELLINGS = [*SPELLINGS, "%2Fv1%2F{v}", "/%2Fv1/{v}", "/v1/{v}#frag", "/v1/%2e/{v}",
                 "/%2e/v1/{v}", "/v1/%2e%2e/v1/{v}", "http://127.0.0.1PORT/v1/{v}",
                 "http://127.0.0.1PORT//v1/{v}", "HTTP://127.0.0.1PORT/v1/{v}",
                 "http://evil.test/v1/{v}", "*"]


def _log_decisions(served: kit.Served) -> list[str]:
    return [line for line in served.log().splitlines() if "via=http" in line]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.Served]:
    """One real service for the raw-HTTP tests, its token created by ``serve`` itself."""
    url = f"sqlite:///{tmp_path_factory.mktemp('http') / 'http.sqlite3'}"
    populate(url)
    with kit.running(url) as served:
        yield served


class TestRealListener:
    """The same door against uvicorn, in raw bytes."""

    def test_no_raw_spelling_decides_without_the_token(self, live: kit.Served) -> None:
        """Every request-target spelling, no token or a wrong one: no 200, no decision logged."""
        port = ":" + live.http_url.rsplit(":", 1)[1]
        before = _log_decisions(live)
        statuses: dict[str, int] = {}
        for verb in ("auth", "relay"):
            body = json.dumps(BODIES[verb]).encode()
            for template in RAW_SPELLINGS:
                target = _spell(template, verb).replace("PORT", port)
                for headers in ([], [("Authorization", "Bearer wrong-0123456789abcdef")],
                                [("Authorization", f"Basic {live.http_token()}")]):
                    status, answer = _raw(live, _request("POST", target, body, headers))
                    statuses[target] = status
                    assert status in {0, 400, 401, 404}, (target, headers, status, answer)
                    assert b'"result"' not in answer
        assert _log_decisions(live) == before
        assert 'transport="http"' not in _raw(live, _request("GET", "/metrics"))[1].decode()
        # The service answered those requests, and with the token the aliases do route.
        assert statuses["//v1/auth"] == 401
        token = [("Authorization", f"Bearer {live.http_token()}")]
        for target in ("/v1/auth", "///v1/auth", "/v1/%61uth", "/v1%2Fauth", "%2Fv1%2Fauth"):
            status, answer = _raw(live, _request("POST", target, json.dumps(AUTH_BODY).encode(),
                                                 token))
            assert (status, json.loads(answer)["result"]) == (200, "yes"), target

    @pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"])
    def test_other_methods_are_401(self, live: kit.Served, method: str) -> None:
        """HEAD, OPTIONS, PUT... on a decision route: 401 without the token."""
        status, answer = _raw(live, _request(method, "//v1/auth", json.dumps(AUTH_BODY).encode()))
        assert status == 401
        assert b'"result"' not in answer

    @pytest.mark.parametrize("headers", [
        [("Authorization", "Bearer {t}"), ("Authorization", "Bearer wrong")],
        [("Authorization", "Bearer wrong"), ("Authorization", "Bearer {t}")],
        [("Authorization", "Bearer {t}" + "x" * 8000)],
        [("Authorization", "Bearer {t}\x0b")],
    ], ids=["right-then-wrong", "wrong-then-right", "long", "vertical-tab"])
    def test_ambiguous_or_odd_authorization_is_refused(
            self, live: kit.Served, headers: list[tuple[str, str]]) -> None:
        """Two Authorization headers, a padded token: never a decision."""
        token = live.http_token()
        sent = [(name, value.format(t=token)) for name, value in headers]
        status, answer = _raw(live, _request("POST", "/v1/auth", json.dumps(AUTH_BODY).encode(),
                                             sent))
        assert status in {400, 401}
        assert b'"result"' not in answer

    def test_a_huge_header_is_refused_and_the_service_lives(self, live: kit.Served) -> None:
        """A 1 MiB Authorization header is refused by the server; the service keeps answering."""
        status, _ = _raw(live, _request("POST", "/v1/auth", json.dumps(AUTH_BODY).encode(),
                                        [("Authorization", "Bearer " + "A" * (1 << 20))]))
        assert status in {0, 400, 401, 413, 431}
        assert live.ask(b"PING\n") == b"yes\n"
        assert _raw(live, _request("GET", "/healthz"))[0] == 200

    def test_deep_nesting_is_400_on_the_real_server(self, live: kit.Served) -> None:
        """The RecursionError body is a 400 from uvicorn too, and the service lives on."""
        token = [("Authorization", f"Bearer {live.http_token()}")]
        for body in (b"[" * 8000 + b"]" * 8000, b'{"":' * 3000 + b"1" + b"}" * 3000):
            assert _raw(live, _request("POST", "/v1/auth", body, token))[0] == 400
        assert _raw(live, _request("GET", "/healthz"))[0] == 200


def test_default_service_creates_a_private_token_and_requires_it(sqlite_url: str,
                                                                  tmp_path: Path) -> None:
    """With no token configured, serve creates eximauthd-http.token (0600), logs its path
    but not its value, and /v1/auth answers 401 without it."""
    populate(sqlite_url)
    path = tmp_path / "eximauthd-http.token"
    with kit.running(sqlite_url, workdir=tmp_path) as served:
        assert path.stat().st_mode & 0o777 == 0o600
        token = served.http_token()
        assert len(token) >= 32
        body = json.dumps(AUTH_BODY).encode()
        assert _raw(served, _request("POST", "/v1/auth", body))[0] == 401
        status, answer = _raw(served, _request("POST", "/v1/auth", body,
                                               [("Authorization", f"Bearer {token}")]))
        assert (status, json.loads(answer)["result"]) == (200, "yes")
        log = served.log()
        assert str(path) in log
        assert token not in log
    # A restart reads the same token rather than making a new one.
    with kit.running(sqlite_url, workdir=tmp_path) as again:
        assert again.http_token() == token
        assert f"read from {path}" in again.log()

