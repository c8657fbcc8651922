"""`xboot serve`'s WSGI edge in process: route templates, the route table, keys, wire checks and headers.

test_serve.py and test_front_door.py run the real server; here the same WSGI application is called with
hand-made environs, so each rule (an optional route parameter, a blank query value, a negative
Content-Length, a charset on JSON but not on a CRL) has a test that reaches it without a child process.
"""

from __future__ import annotations

import io
import json
import sys

import azure.functions as func
import pytest

from xboot.service.serve import MAX_WIRE_BODY, FunctionsWsgiApp, Keys, RouteTable, _pattern, load_routes


def _call(app: FunctionsWsgiApp, method: str, path: str, query: str = "", body: bytes = b"", **environ: str):
    started: dict = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        started.update(status=status, headers=headers)

    base = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "127.0.0.1:7071",
    }
    payload = b"".join(app({**base, **environ}, start_response))
    return int(started["status"].split()[0]), started["headers"], payload


def test_route_templates():
    assert _pattern("/api", "things/{id?}").fullmatch("/api/things")
    assert _pattern("/api", "things/{id?}").fullmatch("/api/things/5")
    assert not _pattern("/api", "things/{id}").fullmatch("/api/things")
    assert _pattern("/api", "files/{*rest}").fullmatch("/api/files/a/b")
    assert not _pattern("/api", "things/{id}").fullmatch("/api/things/a/b")
    assert _pattern("/api", "x{n?}").fullmatch("/api/x") and _pattern("/api", "x{n?}").fullmatch("/api/x7")


def _app() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="things/{id?}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def things(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(json.dumps(dict(req.route_params)), mimetype="application/json")

    @app.route(methods=["POST"])
    def unnamed(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(b"ok", mimetype="application/octet-stream")

    @app.timer_trigger(schedule="0 0 * * * *", arg_name="timer")
    def nightly(timer: func.TimerRequest) -> None:
        return None

    return app


def test_the_route_table_of_an_app():
    table = RouteTable.from_app(_app())
    assert {route.name: (route.path, route.auth_level) for route in table.routes} == {
        "things": ("/api/things/{id?}", "anonymous"),
        "unnamed": ("/api/unnamed", "function"),  # no route: the function's name; the app's default level
    }  # the timer trigger is not a route
    route, params, _ = table.match("GET", "/api/things")
    assert route is not None and params == {}  # an absent optional parameter is absent, not None
    assert table.match("GET", "/api/things/7")[1] == {"id": "7"}


def test_unknown_routes_and_methods_are_json_404_and_405():
    app = FunctionsWsgiApp(RouteTable.from_app(_app()))
    status, headers, payload = _call(app, "GET", "/api/nowhere")
    assert status == 404 and json.loads(payload)["error"] == "not_found"
    status, headers, payload = _call(app, "DELETE", "/api/things/1")
    assert status == 405 and ("Allow", "GET") in headers


def test_keys_by_query_or_header_and_the_refusal_names_the_key():
    app = FunctionsWsgiApp(RouteTable.from_app(_app()), Keys(function="f-key"))
    assert _call(app, "POST", "/api/unnamed")[0] == 401
    assert _call(app, "POST", "/api/unnamed", query="code=f-key")[0] == 200
    assert _call(app, "POST", "/api/unnamed", HTTP_X_FUNCTIONS_KEY="f-key")[0] == 200
    status, _, payload = _call(app, "POST", "/api/unnamed", query="code=wrong")
    assert status == 401 and "needs the function key" in json.loads(payload)["message"]
    assert _call(app, "GET", "/api/things")[0] == 200  # anonymous


def test_the_admin_refusal_names_the_admin_key(app_env, functions):
    app = FunctionsWsgiApp(functions.table, Keys(admin="a-key"))
    status, _, payload = _call(app, "GET", "/api/mgmt/v1/revocations")
    assert status == 401 and "needs the admin (master) key" in json.loads(payload)["message"]


def test_a_blank_query_value_reaches_the_handler(app_env, functions):
    """`?limit=` is a bad limit, not an absent one: the handler sees it and says so."""
    app = FunctionsWsgiApp(functions.table)
    status, _, payload = _call(app, "GET", "/api/mgmt/v1/revocations", query="limit=")
    assert status == 400 and json.loads(payload)["error"] == "invalid_query"


@pytest.mark.parametrize(
    ("length", "status", "code"),
    [("abc", 400, "bad_request"), ("-1", 400, "bad_request"), (str(MAX_WIRE_BODY + 1), 413, "payload_too_large")],
)
def test_content_lengths_that_are_refused_before_reading(length, status, code):
    app = FunctionsWsgiApp(RouteTable.from_app(_app()))
    replied, _, payload = _call(app, "POST", "/api/unnamed", CONTENT_LENGTH=length)
    assert replied == status and json.loads(payload)["error"] == code


def test_charset_is_named_for_json_and_text_only_and_headers_are_not_doubled(app_env, functions):
    app = FunctionsWsgiApp(functions.table)
    _, headers, _ = _call(app, "GET", "/api/nowhere")
    assert [v for k, v in headers if k == "Content-Type"] == ["application/json; charset=utf-8"]
    _, headers, _ = _call(FunctionsWsgiApp(RouteTable.from_app(_app())), "POST", "/api/unnamed")
    assert [v for k, v in headers if k == "Content-Type"] == ["application/octet-stream"]
    assert [k for k, _ in headers].count("Content-Length") == 1


def test_routes_are_loaded_from_the_directory_given(tmp_path, monkeypatch):
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\n"
        "app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)\n"
        "@app.route(route='hello')\n"
        "def hello(req):\n"
        "    return func.HttpResponse('hi')\n"
    )
    (tmp_path / "host.json").write_text('{"extensions": {"http": {"routePrefix": "v2"}}}')
    monkeypatch.delitem(sys.modules, "function_app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    table = load_routes(tmp_path)
    assert [route.path for route in table.routes] == ["/v2/hello"]


@pytest.mark.parametrize(
    ("keys", "line"),
    [
        (Keys(), "keys: none enforced (like Core Tools): every route answers without a key"),
        (Keys(admin="a"), "keys enforced: the admin key on admin routes; the admin key on function routes too"
                          " (?code= or x-functions-key)"),
        (Keys(function="f", admin="a"), "keys enforced: the function key on function routes; the admin key on "
                                        "admin routes; the admin key on function routes too"
                                        " (?code= or x-functions-key)"),
    ],
)  # fmt: skip
def test_the_startup_line_says_which_keys_are_enforced(keys, line):
    assert keys.describe() == line
