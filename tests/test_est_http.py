"""EST over real HTTP (`python -m xboot serve`): curl + openssl exactly as EST tutorials do, and the Python client."""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from tests.fixtures.live_server import LiveServer, start_live_server
from xboot.device.est import EstClient, EstError, est_enroll, est_reenroll
from xboot.service.http.est import CSR_ATTRIBUTES


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """As deployed behind App Service with client certificates on: the forwarded header is believed."""
    settings = {"EstTrustForwardedClientCert": "true"}
    with start_live_server(tmp_path_factory.mktemp("est-trusting"), settings) as server:
        yield server


def est_url(server: LiveServer) -> str:
    return f"{server.url}/api/.well-known/est"


def sh(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """A tutorial's shell lines, run as written (pipes included)."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_tutorial_enroll_and_reenroll_with_curl_and_openssl(trusting: LiveServer, tmp_path: Path):
    enroll = sh(
        """
        curl -sS --fail-with-body "$EST/cacerts" -o cacerts.p7
        openssl base64 -d -in cacerts.p7 | openssl pkcs7 -inform DER -print_certs -out cacerts.pem

        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout device.key \
            -subj "/CN=est-device-01" -outform DER | openssl base64 > csr.b64
        curl -sS --fail-with-body --data-binary @csr.b64 -H "Content-Type: application/pkcs10" \
            -H "x-functions-key: $KEY" -D enroll.headers -o cert.p7 "$EST/simpleenroll"
        openssl base64 -d -in cert.p7 | openssl pkcs7 -inform DER -print_certs -out device.pem
        openssl verify -CAfile "$ROOT_CA" -untrusted cacerts.pem device.pem
        """,
        tmp_path,
        EST=est_url(trusting),
        KEY=str(trusting.function_key),
        ROOT_CA=str(trusting.ca.root_certificate),
    )
    assert enroll.returncode == 0, enroll.stderr
    assert enroll.stdout.strip() == "device.pem: OK"
    headers = (tmp_path / "enroll.headers").read_text().lower()
    assert "content-type: application/pkcs7-mime; smime-type=certs-only" in headers
    device = x509.load_pem_x509_certificate((tmp_path / "device.pem").read_bytes())
    assert device.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "est-device-01"
    assert (trusting.data_dir / "certificates" / "est-device-01" / f"{device.serial_number:X}.json").exists()

    # Behind App Service the front end puts the TLS client certificate in X-ARR-ClientCert; here curl does.
    renew = sh(
        """
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout device2.key \
            -subj "/CN=est-device-01" -outform DER | openssl base64 > csr2.b64
        curl -sS --fail-with-body --data-binary @csr2.b64 -H "Content-Type: application/pkcs10" \
            -H "x-functions-key: $KEY" \
            -H "X-ARR-ClientCert: $(openssl x509 -in device.pem -outform DER | openssl base64 -A)" \
            -o cert2.p7 "$EST/simplereenroll"
        openssl base64 -d -in cert2.p7 | openssl pkcs7 -inform DER -print_certs -out device2.pem
        openssl verify -CAfile "$ROOT_CA" -untrusted cacerts.pem device2.pem
        """,
        tmp_path,
        EST=est_url(trusting),
        KEY=str(trusting.function_key),
        ROOT_CA=str(trusting.ca.root_certificate),
    )
    assert renew.returncode == 0, renew.stderr
    renewed = x509.load_pem_x509_certificate((tmp_path / "device2.pem").read_bytes())
    assert renewed.subject == device.subject and renewed.serial_number != device.serial_number
    new_key = serialization.load_pem_private_key((tmp_path / "device2.key").read_bytes(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert renewed.public_key().public_bytes(*spki) == new_key.public_key().public_bytes(*spki)


def test_tutorial_refusals_are_text_explanations(trusting: LiveServer, live_server: LiveServer, tmp_path: Path):
    refused = sh(
        """
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout d.key \
            -subj "/CN=est-device-02" -outform DER -out csr.der
        openssl base64 -in csr.der > csr.b64
        code() { curl -sS -o body.txt -D headers.txt -w '%{http_code}' "$@"; echo " $(tr -d '\\n' < body.txt)"; }
        code --data-binary @csr.der -H "Content-Type: application/pkcs10" -H "x-functions-key: $KEY" \
            "$EST/simpleenroll"
        code --data-binary @csr.b64 -H "Content-Type: application/pkcs10" -H "x-functions-key: $KEY" \
            "$EST/simplereenroll"
        code --data-binary @csr.b64 -H "Content-Type: application/pkcs10" -H "x-functions-key: $DEFAULT_KEY" \
            -H "X-ARR-ClientCert: $(openssl base64 -A -in csr.der)" "$DEFAULT_EST/simplereenroll"
        grep -i '^content-type: text/plain' headers.txt
        code --data-binary @csr.b64 -H "Content-Type: application/pkcs10" "$EST/simpleenroll"
        code "$EST/cacerts"
        """,
        tmp_path,
        EST=est_url(trusting),
        KEY=str(trusting.function_key),
        DEFAULT_EST=est_url(live_server),
        DEFAULT_KEY=str(live_server.function_key),
    )
    assert refused.returncode == 0, refused.stderr
    binary, no_certificate, untrusted, content_type, no_key, cacerts = refused.stdout.strip().splitlines()
    assert binary.startswith("400 ") and "not base64" in binary
    assert no_certificate.startswith("403 ") and "client authentication" in no_certificate
    assert untrusted.startswith("403 ") and "EstTrustForwardedClientCert is off" in untrusted
    assert content_type.lower().startswith("content-type: text/plain")
    assert no_key.startswith("401 "), "simpleenroll is a FUNCTION route, like /api/certificate"
    assert cacerts.startswith("200 "), "cacerts needs no key (RFC 7030 section 4.1.1)"


def test_python_est_client_flow(trusting: LiveServer, live_server: LiveServer):
    client = EstClient(est_url(trusting), function_key=trusting.function_key)
    assert client.csrattrs() == CSR_ATTRIBUTES
    first = est_enroll(client, "py-est-device-01")
    assert first.certificate.subject.rfc4514_string() == "CN=py-est-device-01"
    root = x509.load_pem_x509_certificate(trusting.ca.root_certificate.read_bytes())
    assert root in first.ca_certificates

    current = base64.b64encode(first.certificate.public_bytes(serialization.Encoding.DER)).decode()
    authenticated = EstClient(
        est_url(trusting), function_key=trusting.function_key, headers={"X-ARR-ClientCert": current}
    )
    renewed = est_reenroll(authenticated, first)
    assert renewed.certificate.subject == first.certificate.subject
    assert renewed.certificate.serial_number != first.certificate.serial_number
    same_key = est_reenroll(authenticated, first, rekey=False)
    assert same_key.key is first.key

    untrusting = EstClient(
        est_url(live_server), function_key=live_server.function_key, headers={"X-ARR-ClientCert": current}
    )
    with pytest.raises(EstError) as refused:
        est_reenroll(untrusting, first)
    assert refused.value.status == 403 and "EstTrustForwardedClientCert" in str(refused.value)
    with pytest.raises(EstError) as refused:
        est_enroll(client, "not a valid id")
    assert refused.value.status == 400 and "registration ID" in str(refused.value)
    with pytest.raises(EstError) as refused:
        est_enroll(EstClient(est_url(trusting)), "py-est-device-02")
    assert refused.value.status == 401
