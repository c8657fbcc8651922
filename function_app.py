"""Azure Functions entry point: a route table onto the HTTP edge in xboot.service.http, nothing more."""

import azure.functions as func

from xboot import logs
from xboot.service.enrollment.authorization import function_key_accepted
from xboot.service.http import enrollment, est, health, lifecycle, reports, trust
from xboot.service.http.edge import respond
from xboot.service.settings import Settings

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
logs.quiet_libraries(logs.level())  # the host sets the format and its own levels; the SDKs stay quiet

# The enrollment routes keep the host's function-key check only while EnrollmentAuthorization accepts
# FunctionKey; otherwise they are anonymous at the host and xboot authorizes every request itself (DPS
# device keys, tokens, certificates: credentials the host cannot see). Read once at start, as the host
# does: a change of app settings restarts the app.
FUNCTION_KEY_ENROLLS = function_key_accepted(Settings.from_environ())
ENROLLMENT_AUTH = func.AuthLevel.FUNCTION if FUNCTION_KEY_ENROLLS else func.AuthLevel.ANONYMOUS


@app.route(route="certificate", methods=["POST"], auth_level=ENROLLMENT_AUTH)
def certificate(req: func.HttpRequest) -> func.HttpResponse:
    return respond(
        lambda: enrollment.enroll_certificate(
            req.get_body(), req.headers.get("Authorization"), FUNCTION_KEY_ENROLLS, Settings.from_environ()
        )
    )


# EST (RFC 7030) under the route prefix: /api/.well-known/est/... (see README for serving /.well-known/est).
@app.route(route=".well-known/est/cacerts", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def est_cacerts(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: est.cacerts(Settings.from_environ()))


def _est_enrollment(req: func.HttpRequest, endpoint: est.Enrollment, function_key_checked: bool) -> func.HttpResponse:
    return respond(
        lambda: endpoint(
            req.get_body(),
            req.headers.get("Authorization"),
            req.headers.get(est.CLIENT_CERT_HEADER),
            function_key_checked,
            Settings.from_environ(),
        )
    )


@app.route(route=".well-known/est/simpleenroll", methods=["POST"], auth_level=ENROLLMENT_AUTH)
def est_simpleenroll(req: func.HttpRequest) -> func.HttpResponse:
    return _est_enrollment(req, est.simpleenroll, FUNCTION_KEY_ENROLLS)


# Re-enrollment is proved by the TLS client certificate alone (RFC 7030 section 3.3.2): anonymous at the host.
@app.route(route=".well-known/est/simplereenroll", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def est_simplereenroll(req: func.HttpRequest) -> func.HttpResponse:
    return _est_enrollment(req, est.simplereenroll, False)


@app.route(route=".well-known/est/csrattrs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def est_csrattrs(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: est.csrattrs())


# Signed system and update reports (report-signing guide): Install API and the trust-anchor tenant configuration.
@app.route(route="install/v1/system-reports", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def system_report_submit(req: func.HttpRequest) -> func.HttpResponse:
    return respond(
        lambda: reports.submit_report(
            "system", req.get_body(), req.headers.get("Content-Type"), Settings.from_environ()
        )
    )


@app.route(route="install/v1/system-reports", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def system_report_list(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: reports.get_reports("system", req.params, Settings.from_environ()))


@app.route(route="install/v1/system-reports/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def system_report_get(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: reports.get_report("system", req.route_params["id"], Settings.from_environ()))


@app.route(route="install/v1/update-reports", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def update_report_submit(req: func.HttpRequest) -> func.HttpResponse:
    return respond(
        lambda: reports.submit_report(
            "update", req.get_body(), req.headers.get("Content-Type"), Settings.from_environ()
        )
    )


@app.route(route="install/v1/update-reports", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def update_report_list(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: reports.get_reports("update", req.params, Settings.from_environ()))


@app.route(route="install/v1/update-reports/{id}", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def update_report_get(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: reports.get_report("update", req.route_params["id"], Settings.from_environ()))


@app.route(
    route="mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints",
    methods=["GET"],
    auth_level=func.AuthLevel.ADMIN,
)
def trusted_fingerprints_get(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: trust.get_trusted_fingerprints(Settings.from_environ()))


@app.route(
    route="mgmt/v1/tenant-config/soup.report.validation.trusted.cert.fingerprints",
    methods=["POST"],
    auth_level=func.AuthLevel.ADMIN,
)
def trusted_fingerprints_set(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: trust.set_trusted_fingerprints(req.get_body(), Settings.from_environ()))


# Device lifecycle: revocations and the issuance audit log (admin); the CRL is public (CRL fetchers carry no keys).
@app.route(route="mgmt/v1/revocations", methods=["POST"], auth_level=func.AuthLevel.ADMIN)
def revocation_create(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: lifecycle.revoke(req.get_body(), Settings.from_environ()))


@app.route(route="mgmt/v1/revocations", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def revocation_list(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: lifecycle.list_revocations(req.params, Settings.from_environ()))


@app.route(route="mgmt/v1/revocations/{id}", methods=["DELETE"], auth_level=func.AuthLevel.ADMIN)
def revocation_delete(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: lifecycle.remove_revocation(req.route_params["id"], Settings.from_environ()))


@app.route(route="mgmt/v1/certificates", methods=["GET"], auth_level=func.AuthLevel.ADMIN)
def issued_certificates(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: lifecycle.list_certificates(req.params, Settings.from_environ()))


@app.route(route="crl", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def crl(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: lifecycle.get_crl(Settings.from_environ()))


# Health for Azure's health check, a load balancer or a smoke test: names and dates only, no secrets, no paths.
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health_check(req: func.HttpRequest) -> func.HttpResponse:
    return respond(lambda: health.health(Settings.from_environ()))
