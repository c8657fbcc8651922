"""Report endpoints: plain data in (body, Content-Type, query, route values), `ApiResponse` out."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from xboot.errors import BadRequest, ConfigurationError, NotFound, Unprocessable
from xboot.service.ca.issuers import load_issuing_ca
from xboot.service.http.edge import ApiResponse, check_size, page_size, query_time
from xboot.service.lifecycle.revocation import check_path
from xboot.service.reports.smime import read_request, report_document
from xboot.service.reports.store import (
    Kind,
    is_report_id,
    list_fleet_reports,
    list_reports,
    read_report,
    store_report,
)
from xboot.service.reports.trust import (
    load_trust_anchors,
)
from xboot.service.reports.verify import Verification, verify_signed_report
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store

log = logging.getLogger(__name__)

GATEWAY_MATCH = "RequireGatewayIdMatch"
DEFAULT_PAGE = 20
MAX_PAGE = 100


def _summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record without the signed message it keeps for re-verification."""
    return {k: v for k, v in record.items() if k != "signedMessage"}


def _gateway_must_match(verification: Verification, settings: Settings) -> bool:
    """`RequireGatewayIdMatch` if set; by default only for signers our issuing CA certified: the CN is the
    identity xboot enrolled, so a device reports as itself. PKIs trusted by fingerprint keep the guide's
    behaviour, where the gateway's CN and its gatewayId may differ."""
    if settings.get(GATEWAY_MATCH) is not None:
        return settings.boolean(GATEWAY_MATCH, True)
    if len(verification.path) < 2:
        return False
    try:
        return verification.path_fingerprints[1] == load_issuing_ca(settings).fingerprint
    except ConfigurationError:  # a reports-only deployment without a CA of its own
        return False


def submit_report(
    kind: Kind, body: bytes, content_type: str | None, settings: Settings, now: dt.datetime | None = None
) -> ApiResponse:
    """Verify first, then read the JSON: nothing unauthenticated is interpreted beyond what verification needs."""
    check_size(body)
    received_at = now or dt.datetime.now(dt.UTC)
    message = read_request(body, content_type)
    store = open_data_store(settings)
    verification = verify_signed_report(message, load_trust_anchors(store, settings), received_at)
    check_path(verification.path, verification.path_fingerprints, settings)
    document = report_document(verification.content)
    if _gateway_must_match(verification, settings) and verification.signer_common_name != document["gatewayId"]:
        raise Unprocessable("the signer certificate's CN must equal the report's gatewayId", code="gateway_mismatch")
    stored = store_report(store, kind, document, verification, message.raw, received_at)
    record = stored.record
    if stored.created:
        log.info("stored %s report %s for gateway %r", kind, record["id"], record["gatewayId"])
    return ApiResponse(
        201 if stored.created else 200,
        {**_summary(record), "duplicate": not stored.created},
        headers={"Location": f"/api/install/v1/{kind}-reports/{record['id']}"},
    )


def get_reports(kind: Kind, query: Mapping[str, str], settings: Settings) -> ApiResponse:
    """One gateway's reports newest first (`gatewayId`), or every gateway's oldest first (`since`, `until`)."""
    gateway_id = query.get("gatewayId")
    since, until = query_time("since", query.get("since")), query_time("until", query.get("until"))
    if not gateway_id and since is None:
        raise BadRequest("give gatewayId (one gateway's reports) or since (every gateway's)", code="invalid_query")
    if gateway_id and (since or until):
        raise BadRequest("since and until list every gateway's reports: leave out gatewayId", code="invalid_query")
    limit = page_size(query.get("limit"), DEFAULT_PAGE, MAX_PAGE)
    token = query.get("continuationToken") or None
    store = open_data_store(settings)
    if gateway_id:
        page = list_reports(store, kind, gateway_id, limit, token)
        scope: dict[str, Any] = {"gatewayId": gateway_id}
    else:
        assert since is not None
        if token is not None and until is None:
            raise BadRequest("with continuationToken, send the since and until of the first page", code="invalid_query")
        until = until or dt.datetime.now(dt.UTC)
        if until <= since:
            raise BadRequest("until must be later than since", code="invalid_query")
        page = list_fleet_reports(store, kind, since, until, limit, token)
        scope = {"since": _utc(since), "until": _utc(until)}
    return ApiResponse(
        200,
        {
            "kind": kind,
            **scope,
            "reports": [_summary(r) for r in page.records],
            "continuationToken": page.continuation_token,
        },
    )


def _utc(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def get_report(kind: Kind, report_id: str, settings: Settings) -> ApiResponse:
    record = read_report(open_data_store(settings), kind, report_id) if is_report_id(report_id) else None
    if record is None:
        raise NotFound(f"no {kind} report with this id")
    return ApiResponse(200, record)
