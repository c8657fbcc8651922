"""`GET /api/health` (anonymous): the CA, the data store and enrollment authorization, 200 or 503."""

from __future__ import annotations

from xboot.service.health import report, run_checks
from xboot.service.http.edge import ApiResponse
from xboot.service.settings import Settings


def health(settings: Settings) -> ApiResponse:
    status, body = report(run_checks(settings))
    return ApiResponse(status, body, {"Retry-After": "30"} if status == 503 else {})
