"""The HTTP API (Falcon ASGI): health, readiness, metrics, and the same decisions as the socket.

Explicit resources, one per path.  JSON in and out; ``200`` carries a decision (``yes``/``no``),
``503`` carries ``defer`` (the service cannot decide now), ``4xx`` a malformed request.  The
documented contract is ``docs/openapi.yaml``; the tests check the app against it.

Every resource needs the bearer token unless its class is one of the open ones (health,
readiness, metrics: nothing about users).  The check is made on the resource the router chose,
not on the path string: a router accepts more spellings of a path (``//v1/auth``, percent
escapes, a trailing slash) than a prefix test can foresee.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
from collections.abc import Iterator
from typing import Any, Protocol

import falcon
import falcon.asgi
import uvicorn

from ..core.decision import Decision, Result
from ..core.protocol import (
    MECHANISMS,
    AuthRequest,
    RelayRequest,
    Request,
    is_valid_transaction,
    parse_client_ip,
)
from ..errors import ConfigError, ProtocolError
from .metrics import Metrics

__all__ = ["MAX_BODY_BYTES", "BearerToken", "QuietServer", "create_app", "parse_json"]

MAX_BODY_BYTES = 16384


class Service(Protocol):
    """What the API needs of the service that runs it (:class:`~.server.Service`)."""

    metrics: Metrics

    async def readiness(self) -> Decision: ...

    def database_node(self) -> dict[str, Any] | None: ...

    async def decide(self, request: Request, transport: str = ...) -> Decision: ...


def _answer(resp: falcon.asgi.Response, decision: Decision) -> None:
    resp.status = falcon.HTTP_503 if decision.result is Result.DEFER else falcon.HTTP_200
    resp.media = {"result": decision.result.value, "reason": decision.text}


class _Rejected(ValueError):
    """A JSON text that parses but that we refuse (NaN, a duplicate key...)."""


def _no_constant(_name: str) -> Any:
    raise _Rejected("NaN and Infinity are not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999999 would silently become inf
        raise _Rejected("number out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # {"username": "a", "username": "b"}: whoever reads the body first (a proxy, a log)
    # and we must not see different requests.
    data = dict(pairs)
    if len(data) != len(pairs):
        raise _Rejected("duplicate key")
    return data


def parse_json(body: bytes) -> Any:
    """*body* as strict JSON: UTF-8 without BOM, no NaN/Infinity, no duplicate keys.  Pure.

    :raises ValueError: anything else, including nesting too deep for the parser and integers
        too long to convert (both raise other exceptions inside :mod:`json`).
    """
    try:
        # Decoded here, not by json.loads(bytes), which would sniff UTF-16 and skip a BOM;
        # json.loads(str) refuses a BOM.
        text = body.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(type(exc).__name__) from None


async def _read_json(req: falcon.asgi.Request) -> dict[str, Any]:
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"at most {MAX_BODY_BYTES} bytes")
    body = await req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(description=f"at most {MAX_BODY_BYTES} bytes")
    try:
        data = parse_json(body)
    except ValueError:
        raise falcon.HTTPBadRequest(title="invalid JSON") from None
    if not isinstance(data, dict):
        raise falcon.HTTPBadRequest(title="expected a JSON object")
    return data


def _fields(data: dict[str, Any], required: tuple[str, ...],
            optional: tuple[str, ...]) -> dict[str, str]:
    unknown = set(data) - set(required) - set(optional)
    if unknown:
        raise falcon.HTTPBadRequest(title="unknown field", description=sorted(unknown)[0][:64])
    out: dict[str, str] = {}
    for name in (*required, *optional):
        if name not in data:
            if name in required:
                raise falcon.HTTPBadRequest(title="missing field", description=name)
            continue
        if not isinstance(data[name], str):
            raise falcon.HTTPBadRequest(title="field must be a string", description=name)
        try:
            data[name].encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            raise falcon.HTTPBadRequest(title="field is not valid Unicode",
                                        description=name) from None
        out[name] = data[name]
    try:
        parse_client_ip(out.get("client_ip", ""))  # the socket's own check
    except ProtocolError:
        raise falcon.HTTPBadRequest(title="invalid client_ip") from None
    if "transaction" in out and not is_valid_transaction(out["transaction"]):
        raise falcon.HTTPBadRequest(title="invalid transaction")
    return out


class _Open:
    """A resource served without the token: it says nothing about users."""


class Health(_Open):
    """``GET /healthz``: the process is alive."""

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class Ready(_Open):
    """``GET /readyz``: the database answers (``PING``'s check, cached for a second)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        # Not a decision: no worker, no decision line (Service.readiness).
        decision = await self.service.readiness()
        ready = decision.allowed
        resp.status = falcon.HTTP_200 if ready else falcon.HTTP_503
        media: dict[str, Any] = {"status": "ready" if ready else "unavailable",
                                 "reason": decision.text}
        node = self.service.database_node()
        if node is not None:
            media["database_node"] = node
        resp.media = media


class MetricsResource(_Open):
    """``GET /metrics``: Prometheus text format."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_get(self, _req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.data = self.service.metrics.render()


class Auth:
    """``POST /v1/auth``: ``{"username", "password", "mechanism"?, "client_ip"?}``."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        data = _fields(await _read_json(req), ("username", "password"),
                       ("mechanism", "client_ip"))
        mechanism = data.get("mechanism", "PLAIN")
        if mechanism not in MECHANISMS:
            raise falcon.HTTPBadRequest(title="unsupported mechanism")
        request: Request = AuthRequest(mechanism, data["username"], data["password"],
                                       data.get("client_ip", ""))
        _answer(resp, await self.service.decide(request, transport="http"))


class Relay:
    """``POST /v1/relay``: ``{"authenticated_id", "sender", "recipient", "client_ip"?,
    "transaction"?}``."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        data = _fields(await _read_json(req), ("authenticated_id", "sender", "recipient"),
                       ("client_ip", "transaction"))
        request: Request = RelayRequest(data["authenticated_id"], data["sender"],
                                        data["recipient"], data.get("client_ip", ""),
                                        data.get("transaction", ""))
        _answer(resp, await self.service.decide(request, transport="http"))


class BearerToken:
    """Require ``Authorization: Bearer TOKEN`` for every routed resource but the open ones.

    Decided in ``process_resource``, on the resource the router chose, so every spelling of a
    path that reaches a decision is covered, and a resource added later is closed by default.
    A request no route matches gets the router's plain 404 (no resource, nothing decided).
    """

    def __init__(self, token: str) -> None:
        if not token:
            # An empty token would match "Authorization: Bearer ": never serve with one.
            raise ConfigError("http.token: the HTTP API needs a token")
        # Compare digests: constant time, and the token's length is not compared either.
        self._digest = _digest(token.encode())

    def __repr__(self) -> str:
        return "BearerToken('***')"

    async def process_resource(self, req: falcon.asgi.Request, _resp: falcon.asgi.Response,
                               resource: object, _params: dict[str, Any]) -> None:
        if isinstance(resource, _Open):
            return
        if not self.accepts(req.get_header("Authorization") or ""):
            raise falcon.HTTPUnauthorized(title="bearer token required",
                                          challenges=["Bearer"])

    def accepts(self, header: str) -> bool:
        """Whether an ``Authorization`` header value carries the token (scheme in any case)."""
        scheme, _, given = header.strip(" \t").partition(" ")
        given = given.strip(" \t")
        # Compared even when the scheme is wrong, so the time taken says nothing either way.
        matches = hmac.compare_digest(_digest(given.encode("utf-8", "surrogateescape")),
                                      self._digest)
        return matches and scheme.lower() == "bearer"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(b"eximauthd-http-token\0" + value).digest()


def create_app(service: Service, token: str) -> falcon.asgi.App[Any, Any]:
    """The ASGI application for *service*; *token* guards every resource but the open ones."""
    app = falcon.asgi.App(middleware=[BearerToken(token)])
    app.add_route("/healthz", Health())
    app.add_route("/readyz", Ready(service))
    app.add_route("/metrics", MetricsResource(service))
    app.add_route("/v1/auth", Auth(service))
    app.add_route("/v1/relay", Relay(service))
    return app


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM and SIGHUP.

    Here rather than in :mod:`.server`, which imports this module only with HTTP on.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
