"""Trust-anchor endpoints (the report-signing guide's tenant configuration): JSON in, `ApiResponse` out."""

from __future__ import annotations

import datetime as dt
from typing import Any

from xboot.service.http.edge import ApiResponse, field_ci, json_object
from xboot.service.reports.trust import (
    CONFIG_NAME,
    TrustList,
    parse_fingerprint_list,
    read_trust_list,
    replace_trust_list,
    trusts_issuing_ca,
)
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store


def _trust_body(trust: TrustList, settings: Settings) -> dict[str, Any]:
    return {
        "key": CONFIG_NAME,
        "value": list(trust.fingerprints),
        "source": trust.source,
        "updatedAt": trust.updated_at,
        "issuingCaTrusted": trusts_issuing_ca(settings),
    }


def get_trusted_fingerprints(settings: Settings) -> ApiResponse:
    return ApiResponse(200, _trust_body(read_trust_list(open_data_store(settings), settings), settings))


def set_trusted_fingerprints(body: bytes, settings: Settings) -> ApiResponse:
    """Replaces the whole list, as in the guide: send every fingerprint that should stay trusted."""
    fingerprints = parse_fingerprint_list(field_ci(json_object(body), "value"))
    trust = replace_trust_list(open_data_store(settings), fingerprints, dt.datetime.now(dt.UTC))
    return ApiResponse(200, _trust_body(trust, settings))
