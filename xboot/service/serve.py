"""`python -m xboot serve`: the Function App's own routes on a real WSGI server (waitress).

The route table is read from `function_app.app` itself, so what is served here is
exactly what Azure serves. Like Core Tools, auth levels are not enforced unless a
function key is given (`--function-key`, `--admin-key`).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

log = logging.getLogger(__name__)

access = logging.getLogger("xboot.serve")  # one line per request: method, path (never the query: keys), status, ms
MAX_WIRE_BODY = 1024 * 1024  # bodies past this are refused before they are read
_PARAMETER = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(\?)?(?::[^}]*)?\}")
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def route_prefix(host_json: Path) -> str:
    try:
        prefix = json.loads(host_json.read_text())["extensions"]["http"]["routePrefix"]
    except (OSError, KeyError, TypeError, ValueError):
        prefix = "api"
    return "/" + prefix.strip("/") if prefix.strip("/") else ""


def _pattern(prefix: str, template: str) -> re.Pattern[str]:
    regex, position = "", 0
    for match in _PARAMETER.finditer(template):
        regex += re.escape(template[position : match.start()])
        catch_all, name, optional = match.group(1), match.group(2), match.group(3)
        part = f"(?P<{name}>.+)" if catch_all else f"(?P<{name}>[^/]+)"
        if optional:
            regex = regex[:-1] + f"(?:/{part})?" if regex.endswith("/") else regex + part + "?"
        else:
            regex += part
        position = match.end()
    regex += re.escape(template[position:])
    return re.compile(re.escape(prefix + "/") + regex + "/?" if template else re.escape(prefix) + "/?")


@functools.cache
def registered_functions(app: func.FunctionApp) -> tuple[Any, ...]:
    """`app.get_functions()` may be called only once per app (a second call raises): keep its result."""
    return tuple(app.get_functions())


@dataclass(frozen=True)
class Route:
    name: str
    path: str  # the template as served, e.g. /api/install/v1/system-reports/{id}
    pattern: re.Pattern[str]
    methods: frozenset[str] | None  # None: every method
    auth_level: str
    function: Callable[[func.HttpRequest], func.HttpResponse]
    literal_length: int  # more literal text wins, as in the Functions host


class RouteTable:
    """HTTP routes of a FunctionApp, matched like the Functions host does."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: -r.literal_length)

    @classmethod
    def from_app(cls, app: func.FunctionApp, prefix: str = "/api") -> RouteTable:
        routes = []
        for function in registered_functions(app):
            if not function.is_http_function():
                continue
            trigger = function.get_trigger()
            template = (trigger.route or function.get_function_name()).strip("/")
            methods = (
                frozenset(str(getattr(m, "value", m)).upper() for m in trigger.methods) if trigger.methods else None
            )
            level = str(getattr(trigger.auth_level, "value", trigger.auth_level) or "function").lower()
            routes.append(
                Route(
                    name=function.get_function_name(),
                    path=f"{prefix}/{template}",
                    pattern=_pattern(prefix, template),
                    methods=methods,
                    auth_level=level,
                    function=function.get_user_function(),
                    literal_length=len(_PARAMETER.sub("", template)),
                )
            )
        return cls(routes)

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], set[str]]:
        allowed: set[str] = set()
        for route in self.routes:
            found = route.pattern.fullmatch(path)
            if found is None:
                continue
            if route.methods is None or method in route.methods:
                return route, {k: v for k, v in found.groupdict().items() if v is not None}, allowed
            allowed |= route.methods
        return None, {}, allowed


def _json(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"error": code, "message": message}),
        status_code=status,
        headers=headers,
        mimetype="application/json",
    )


@dataclass(frozen=True)
class Keys:
    """The keys `xboot serve` enforces, like the Functions host's function and master keys."""

    function: str | None = None
    admin: str | None = None

    def __post_init__(self) -> None:
        # An empty key (what `export XBOOT_ADMIN_KEY=$UNSET` gives) would match an empty header: refuse it.
        for name, value in (("function key", self.function), ("admin key", self.admin)):
            if value is not None and not value.strip():
                raise ValueError(f"the {name} is empty; give a real key or leave it unset")

    def describe(self) -> str:
        """The startup line: exactly which keys this server enforces."""
        if self.function is None and self.admin is None:
            return "keys: none enforced (like Core Tools): every route answers without a key"
        parts = []
        if self.function is not None:
            parts.append("the function key on function routes")
        parts.append("the admin key on admin routes" if self.admin is not None else "admin routes: no key works")
        if self.admin is not None:
            parts.append("the admin key on function routes too")
        return "keys enforced: " + "; ".join(parts) + " (?code= or x-functions-key)"

    def permits(self, level: str, presented: str | None) -> bool:
        if level == "anonymous" or (self.function is None and self.admin is None):
            return True
        if not presented:  # an empty key never matches, whatever is configured
            return False
        candidates = [self.admin] if level == "admin" else [self.function, self.admin]
        return any(c is not None and hmac.compare_digest(c.encode(), presented.encode()) for c in candidates)


class FunctionsWsgiApp:
    """A WSGI application that calls the registered functions with real `func.HttpRequest` objects."""

    def __init__(self, table: RouteTable, keys: Keys = Keys()) -> None:
        self.table = table
        self.keys = keys

    def dispatch(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> func.HttpResponse:
        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        route, route_params, allowed = self.table.match(method.upper(), parts.path)
        if route is None:
            if allowed:
                return _json(405, "method_not_allowed", "method not allowed", {"Allow": ", ".join(sorted(allowed))})
            return _json(404, "not_found", "no such route")
        lowered = {k.lower(): v for k, v in headers.items()}
        if not self.keys.permits(route.auth_level, params.get("code") or lowered.get("x-functions-key")):
            key = "the admin (master) key" if route.auth_level == "admin" else "the function key"
            return _json(401, "unauthorized", f"this route needs {key}: ?code= or the x-functions-key header")
        request = func.HttpRequest(
            method.upper(), url, headers=dict(headers), params=params, route_params=route_params, body=body
        )
        return route.function(request)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        began = time.perf_counter()
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0:
            response = _json(400, "bad_request", "invalid Content-Length")
        elif length > MAX_WIRE_BODY:
            response = _json(413, "payload_too_large", "request body too large")
        else:
            body = environ["wsgi.input"].read(length) if length else b""
            headers = {
                key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")
            }
            if environ.get("CONTENT_TYPE"):
                headers["Content-Type"] = environ["CONTENT_TYPE"]
            host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
            query = environ.get("QUERY_STRING")
            path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
            url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path}" + (f"?{query}" if query else "")
            response = self.dispatch(environ["REQUEST_METHOD"], url, headers, body)
        payload = response.get_body()
        access.info("%s %s %d %.1f ms", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO", "/")[:200],
                    response.status_code, (time.perf_counter() - began) * 1000)  # fmt: skip
        content_type = response.mimetype or "application/octet-stream"
        if response.charset and (content_type.startswith("text/") or content_type.endswith("json")):
            content_type += f"; charset={response.charset}"
        status = response.status_code
        out = [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
        out += [(k, v) for k, v in response.headers.items() if k.lower() not in ("content-type", "content-length")]
        start_response(f"{status} {_REASONS.get(status, 'Status')}", out)
        return [payload]


def load_routes(directory: Path) -> RouteTable:
    """The routes of `directory/function_app.py`, under the routePrefix of its host.json."""
    import importlib
    import sys

    sys.path.insert(0, str(directory))
    module = importlib.import_module("function_app")
    return RouteTable.from_app(module.app, route_prefix(directory / "host.json"))


_WIRE_ERROR_CODES = {400: "bad_request", 413: "payload_too_large", 431: "headers_too_large"}


def json_error_channel() -> type:
    """A waitress channel whose own errors (bad Content-Length, oversized or broken chunked bodies, header
    limits) are JSON like the app's, not waitress's text/plain: they are answered before the app runs."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):  # type: ignore[misc]
        def execute(self) -> None:
            error = self.request.error
            code = _WIRE_ERROR_CODES.get(error.code, "bad_request" if error.code < 500 else "internal_error")
            message = f"{error.reason}: {error.body}".rstrip(": ") if error.body else error.reason
            body = json.dumps({"error": code, "message": message}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):  # type: ignore[misc]
        error_task_class = JsonErrorTask

    return JsonErrorChannel


def listen(host: str, port: int) -> socket.socket:
    """The listening socket (port 0 picks a free one), bound before any worker starts."""
    return socket.create_server((host, port), backlog=1024)


def create_server(app: FunctionsWsgiApp, sock: socket.socket, threads: int) -> Any:
    """The waitress server for `sock`, not yet serving; each worker process makes its own."""
    import waitress

    server = waitress.create_server(
        app, sockets=[sock], threads=threads, max_request_body_size=MAX_WIRE_BODY, ident="xboot"
    )
    server.channel_class = json_error_channel()
    return server
