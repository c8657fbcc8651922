"""Enrollment authorization over real HTTP: every method's accept and refuse paths, the identity lock, the daily
limit, renewal and superseding, as a device (and an attacker holding the function key) would meet them.

Servers are real `xboot serve` processes; birth certificates and attestation signatures are made with the
openssl CLI; EST's HTTP Basic flow is driven by curl.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fixtures.live_server import ROOT, LiveServer, start_live_server
from tests.helpers import make_csr, openssl
from xboot import dps
from xboot.pki import sha256_fingerprint

GROUP_KEY = base64.b64encode(b"group-key-primary-0123456789abcdef").decode()
SECONDARY_KEY = base64.b64encode(b"group-key-secondary-0123456789abcd").decode()
OTHER_GROUP = base64.b64encode(b"some-other-group-key-0123456789ab").decode()
EST = "/api/.well-known/est"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(server: LiveServer, method: str, path: str, body: bytes | dict | None = None,
         headers: dict[str, str] | None = None) -> Reply:  # fmt: skip
    data = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    connection = http.client.HTTPConnection(urlsplit(server.url).netloc, timeout=30)
    try:
        connection.request(method, path, data, headers or {})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def enroll(server: LiveServer, registration_id: str, csr_b64: str, authorization: str | None = None,
           attestation: dict | None = None) -> Reply:  # fmt: skip
    body: dict[str, Any] = {"RegistrationId": registration_id, "Csr": csr_b64}
    if attestation is not None:
        body["Attestation"] = attestation
    return call(server, "POST", "/api/certificate", body, {"Authorization": authorization} if authorization else {})


def sas(registration_id: str, group_key: str = GROUP_KEY, seconds: int = 600, signed_id: str | None = None) -> str:
    device_key = dps.derive_device_key(group_key, signed_id or registration_id)
    return dps.sas_token(device_key, signed_id or registration_id, int(time.time()) + seconds)


def refused(reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply.body
    body = reply.json()
    assert body["error"] == code, body
    return body["message"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# -- a manufacturer PKI and an operator's token key, made with openssl -------------------------------------------


@dataclass(frozen=True)
class Factory:
    directory: Path
    root_fingerprint: str

    def birth_certificate(self, name: str, subject: str, issuer: str = "mfg-ca") -> tuple[Path, Path]:
        key, cert = self.directory / f"{name}.key", self.directory / f"{name}.crt"
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key))
        openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(self.directory / f"{name}.csr"))
        (self.directory / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
        )
        where = self.directory
        openssl("x509", "-req", "-in", str(where / f"{name}.csr"), "-CA", str(where / f"{issuer}.crt"),
                "-CAkey", str(where / f"{issuer}.key"), "-CAcreateserial", "-days", "30", "-sha256",
                "-extfile", str(where / f"{name}.ext"), "-out", str(cert))  # fmt: skip
        return cert, key


def _ca(directory: Path, name: str, subject: str) -> None:
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(directory / f"{name}.key"))
    (directory / f"{name}.cnf").write_text(
        "[req]\ndistinguished_name=dn\nx509_extensions=v3\n[dn]\n[v3]\nbasicConstraints=critical,CA:TRUE\n"
        "keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
    )
    openssl("req", "-x509", "-new", "-key", str(directory / f"{name}.key"), "-subj", subject, "-days", "60",
            "-config", str(directory / f"{name}.cnf"), "-out", str(directory / f"{name}.crt"))  # fmt: skip


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    directory = tmp_path_factory.mktemp("factory")
    _ca(directory, "mfg-ca", "/CN=Contoso Manufacturing CA")
    _ca(directory, "rogue-ca", "/CN=Contoso Manufacturing CA")  # same name, another key: not trusted
    cert = x509.load_pem_x509_certificate((directory / "mfg-ca.crt").read_bytes())
    return Factory(directory, sha256_fingerprint(cert))


@pytest.fixture(scope="module")
def operator_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("operator") / "operator.key"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))
    return path


def _public_pem(key_path: Path) -> str:
    return openssl("pkey", "-in", str(key_path), "-pubout").decode()


@pytest.fixture(scope="module")
def strong(tmp_path_factory, factory: Factory, operator_key: Path) -> LiveServer:
    """DeviceKey, Token and Certificate; FunctionKey not accepted, so the enrollment routes are anonymous."""
    settings = {
        "EnrollmentAuthorization": "DeviceKey,Token,Certificate",
        "EnrollmentGroupKeys": f"{GROUP_KEY},{SECONDARY_KEY}",
        "EnrollmentTokenKeys": _public_pem(operator_key),
        "EnrollmentTrustedFingerprints": factory.root_fingerprint,
        "EstTrustForwardedClientCert": "true",
        "SupersededGraceHours": "0",
        "MaxCertificatesPerDay": "3",
    }
    with start_live_server(tmp_path_factory.mktemp("strong"), settings) as server:
        yield server


# -- DeviceKey: Azure DPS's derivation and SAS token ---------------------------------------------------------------


def test_device_keys_are_derived_exactly_as_azure_dps_documents():
    # The example of Microsoft's "provision devices using symmetric keys" guide, and openssl's HMAC.
    group = "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw=="
    registration_id = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6"
    assert dps.derive_device_key(group, registration_id) == "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc="
    mac = openssl("dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{base64.b64decode(group).hex()}",
                  "-binary", stdin=registration_id.encode())  # fmt: skip
    assert base64.b64encode(mac).decode() == dps.derive_device_key(group, registration_id)
    token = dps.parse_sas_token(
        dps.sas_token("Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=", registration_id, 1700000000)
    )
    assert (token.resource, token.expiry, token.key_name) == (
        f"registrations/{registration_id}",
        1700000000,
        "registration",
    )


def test_a_dps_sas_token_enrolls_and_the_function_key_is_not_needed(strong, tmp_path):
    registration_id = new_id("dk")
    reply = enroll(strong, registration_id, make_csr(tmp_path, registration_id).b64, sas(registration_id))
    assert reply.status == 200, reply.body
    assert reply.json()["registrationId"] == registration_id


def test_the_secondary_group_key_works_during_rotation(strong, tmp_path):
    registration_id = new_id("dk2")
    reply = enroll(
        strong, registration_id, make_csr(tmp_path, registration_id).b64, sas(registration_id, SECONDARY_KEY)
    )
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    ("make_header", "status", "code"),
    [
        (lambda rid: None, 401, "authorization_required"),
        (lambda rid: "SharedAccessSignature nonsense", 401, "invalid_credential"),
        (lambda rid: "SharedAccessSignature sr=registrations%2Fx&sig=%%%&se=1", 401, "invalid_credential"),
        (lambda rid: sas(rid, OTHER_GROUP), 401, "invalid_credential"),  # a key of another group
        (lambda rid: sas(rid, seconds=-10), 401, "invalid_credential"),  # expired
        (lambda rid: sas(rid, seconds=7200), 401, "invalid_credential"),  # beyond EnrollmentTokenMaxSeconds
        (lambda rid: sas(rid, signed_id="someone-else"), 403, "credential_mismatch"),  # valid, for another ID
        (lambda rid: sas(rid).replace("skn=registration", "skn=owner"), 401, "invalid_credential"),
        (lambda rid: "Basic " + base64.b64encode(f"{rid}:x".encode()).decode(), 401, "invalid_credential"),
    ],
)
def test_device_key_refusals(strong, tmp_path, make_header, status, code):
    registration_id = new_id("dkr")
    reply = enroll(strong, registration_id, make_csr(tmp_path, registration_id).b64, make_header(registration_id))
    refused(reply, status, code)
    if status == 401:
        assert "Basic" in reply.headers.get("www-authenticate", "") and "Bearer" in reply.headers["www-authenticate"]


def test_the_function_key_alone_no_longer_enrolls(strong, tmp_path):
    registration_id = new_id("fk")
    reply = call(strong, "POST", f"/api/certificate?code={strong.function_key}",
                 {"RegistrationId": registration_id, "Csr": make_csr(tmp_path, registration_id).b64},
                 {"x-functions-key": str(strong.function_key)})  # fmt: skip
    refused(reply, 401, "authorization_required")


# -- EST: HTTP Basic with the device key, challenges, the TLS client certificate -----------------------------------


def _curl_est(server: LiveServer, path: str, csr_der: bytes, *args: str) -> tuple[int, str, bytes]:
    result = subprocess.run(
        ["curl", "-sS", "-D", "-", "-o", "-", "-H", "Content-Type: application/pkcs10", "--data-binary",
         base64.encodebytes(csr_der).decode(), *args, f"{server.url}{EST}/{path}"],
        capture_output=True, check=True,
    )  # fmt: skip
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), "\n".join(lines[1:]), body


def test_est_without_credentials_is_challenged_as_est_clients_expect(strong, tmp_path):
    registration_id = new_id("est")
    status, headers, body = _curl_est(strong, "simpleenroll", make_csr(tmp_path, registration_id).der)
    assert status == 401
    assert 'www-authenticate: basic realm="xboot", bearer realm="xboot"' in headers.lower()
    assert "content-type: text/plain" in headers.lower() and b"needs a credential" in body


def test_est_basic_with_the_device_key_enrolls_with_curl(strong, tmp_path):
    registration_id = new_id("estb")
    device_key = dps.derive_device_key(GROUP_KEY, registration_id)
    status, _, body = _curl_est(strong, "simpleenroll", make_csr(tmp_path, registration_id).der,
                                "--user", f"{registration_id}:{device_key}")  # fmt: skip
    assert status == 200, body
    wrong_status, _, _ = _curl_est(strong, "simpleenroll", make_csr(tmp_path / "w", new_id("estw")).der,
                                   "--user", f"{registration_id}:{device_key}")  # fmt: skip
    assert wrong_status == 403  # a valid device key, but the CSR's CN is another registration ID
    bad_status, _, _ = _curl_est(strong, "simpleenroll", make_csr(tmp_path / "b", new_id("estx")).der,
                                 "--user", "nobody:AAAA")  # fmt: skip
    assert bad_status == 401


def test_est_reenroll_with_the_tls_client_certificate_alone(strong, tmp_path):
    registration_id = new_id("estr")
    first = enroll(strong, registration_id, make_csr(tmp_path, registration_id).b64, sas(registration_id))
    assert first.status == 200
    header = {"X-ARR-ClientCert": first.json()["certificate"], "Content-Type": "application/pkcs10"}
    csr = make_csr(tmp_path / "n", registration_id).der
    reply = call(strong, "POST", f"{EST}/simplereenroll", base64.encodebytes(csr), header)
    assert reply.status == 200, reply.body


# -- Token: one-time JWTs ----------------------------------------------------------------------------------------------


def _token(operator_key: Path, sub: str, **claims: Any) -> str:
    key = serialization.load_pem_private_key(operator_key.read_bytes(), None)
    now = int(time.time())
    body = {"sub": sub, "aud": "xboot", "exp": now + 600, "jti": secrets.token_hex(8), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="ES256")


def test_a_token_enrolls_once_and_a_replay_is_refused(strong, operator_key, tmp_path):
    registration_id = new_id("tk")
    token = _token(operator_key, registration_id)
    csr = make_csr(tmp_path, registration_id).b64
    assert enroll(strong, registration_id, csr, f"Bearer {token}").status == 200
    refused(enroll(strong, registration_id, csr, f"Bearer {token}"), 403, "token_used")


def test_two_concurrent_uses_of_one_token_give_exactly_one_certificate(strong, operator_key, tmp_path):
    registration_id = new_id("tkc")
    token = _token(operator_key, registration_id)
    csr = make_csr(tmp_path, registration_id).b64
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: enroll(strong, registration_id, csr, f"Bearer {token}"), range(8)))
    assert sorted(r.status for r in replies) == [200] + [403] * 7
    assert all(r.json()["error"] == "token_used" for r in replies if r.status == 403)


def test_a_token_bound_to_a_key_enrolls_only_that_key(strong, operator_key, tmp_path):
    registration_id = new_id("tks")
    csr = make_csr(tmp_path, registration_id)
    spki = x509.load_der_x509_csr(csr.der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    bound = _token(operator_key, registration_id, sha=__import__("hashlib").sha256(spki).hexdigest())
    other = make_csr(tmp_path / "o", registration_id)
    refused(enroll(strong, registration_id, other.b64, f"Bearer {bound}"), 403, "credential_mismatch")
    assert enroll(strong, registration_id, csr.b64, f"Bearer {bound}").status == 200


@pytest.mark.parametrize(
    ("claims", "status", "code"),
    [
        ({"exp": int(time.time()) - 3600}, 401, "invalid_credential"),  # expired, beyond the 5 min skew
        ({"aud": "someone-else"}, 401, "invalid_credential"),
        ({"exp": int(time.time()) + 3 * 86400}, 401, "invalid_credential"),  # more than 24 h ahead
        ({"jti": None}, 401, "invalid_credential"),
        ({"sub": "another-device"}, 403, "credential_mismatch"),
    ],
)
def test_token_refusals(strong, operator_key, tmp_path, claims, status, code):
    registration_id = new_id("tkr")
    token = _token(operator_key, claims.pop("sub", registration_id), **claims)
    refused(enroll(strong, registration_id, make_csr(tmp_path, registration_id).b64, f"Bearer {token}"), status, code)


def test_tokens_signed_by_another_key_or_unsigned_are_refused(strong, tmp_path):
    registration_id = new_id("tku")
    stranger = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({"sub": registration_id, "aud": "xboot", "exp": int(time.time()) + 600, "jti": "j"},
                        stranger, algorithm="ES256")  # fmt: skip
    csr = make_csr(tmp_path, registration_id).b64
    refused(enroll(strong, registration_id, csr, f"Bearer {forged}"), 401, "invalid_credential")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    payload = base64.urlsafe_b64encode(json.dumps({"sub": registration_id, "aud": "xboot", "exp": int(time.time()) + 60,
                                                   "jti": "n"}).encode()).rstrip(b"=").decode()  # fmt: skip
    refused(enroll(strong, registration_id, csr, f"Bearer {header}.{payload}."), 401, "invalid_credential")


def test_xboot_token_create_mints_a_token_the_service_accepts(strong, operator_key, tmp_path):
    registration_id = new_id("tkcli")
    minted = subprocess.run([sys.executable, "-m", "xboot", "token", "create", "--key", str(operator_key),
                             "--registration-id", registration_id, "--ttl", "10m"],
                            capture_output=True, text=True, check=True, cwd=ROOT)  # fmt: skip
    token = minted.stdout.strip()
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == registration_id
    device = tmp_path / "device"
    run = subprocess.run([sys.executable, "-m", "xboot", "enroll", "--url", strong.url, "--registration-id",
                          registration_id, "--out", str(device), "--token", token, "--json"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (device / "device.crt").exists()


# -- Certificate: birth certificates (openssl) and the current certificate -----------------------------------------


def _attestation(cert: Path, key: Path, csr_der: bytes, work: Path, chain: list[Path] | None = None) -> dict:
    """What a device sends: its birth certificate, the chain up to the trusted CA (the manufacturer CA by
    default: a fingerprint names an anchor, the message carries it), and `openssl dgst -sha256 -sign`."""
    chain = [cert.parent / "mfg-ca.crt"] if chain is None else chain
    (work / "csr.der").write_bytes(csr_der)
    signature = openssl("dgst", "-sha256", "-sign", str(key), str(work / "csr.der"))
    certificates = [x509.load_pem_x509_certificate(p.read_bytes()) for p in (cert, *chain)]
    encoded = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certificates]
    return {"Certificates": encoded, "Signature": base64.b64encode(signature).decode()}


def test_a_birth_certificate_from_a_trusted_manufacturer_enrolls(strong, factory, tmp_path):
    registration_id = new_id("bc")
    cert, key = factory.birth_certificate(registration_id, f"/CN={registration_id}/O=Contoso")
    csr = make_csr(tmp_path, registration_id)
    reply = enroll(strong, registration_id, csr.b64, attestation=_attestation(cert, key, csr.der, tmp_path))
    assert reply.status == 200, reply.body


def test_birth_certificate_refusals(strong, factory, tmp_path):
    registration_id = new_id("bcr")
    csr = make_csr(tmp_path, registration_id)
    # Another ID's birth certificate: genuine, but not this device.
    cert, key = factory.birth_certificate(f"{registration_id}-o", f"/CN={registration_id}-other")
    refused(enroll(strong, registration_id, csr.b64, attestation=_attestation(cert, key, csr.der, tmp_path)),
            403, "credential_mismatch")  # fmt: skip
    # A rogue CA with the manufacturer's name: not the trusted fingerprint.
    rogue, rogue_key = factory.birth_certificate(f"{registration_id}-r", f"/CN={registration_id}", issuer="rogue-ca")
    rogue_chain = [factory.directory / "rogue-ca.crt"]
    refused(enroll(strong, registration_id, csr.b64, attestation=_attestation(rogue, rogue_key, csr.der, tmp_path,
                                                                               rogue_chain)),
            401, "invalid_credential")  # fmt: skip
    # The rogue leaf with the genuine manufacturer CA embedded: the signature does not chain.
    refused(enroll(strong, registration_id, csr.b64, attestation=_attestation(rogue, rogue_key, csr.der, tmp_path)),
            401, "invalid_credential")  # fmt: skip
    # A genuine certificate whose signature is over other bytes (a replayed attestation).
    good, good_key = factory.birth_certificate(f"{registration_id}-g", f"/CN={registration_id}")
    other = make_csr(tmp_path / "other", registration_id)
    replayed = _attestation(good, good_key, other.der, tmp_path)
    refused(enroll(strong, registration_id, csr.b64, attestation=replayed), 401, "invalid_credential")


def test_a_revoked_birth_certificate_is_refused(strong, factory, tmp_path):
    registration_id = new_id("bcv")
    cert, key = factory.birth_certificate(registration_id, f"/CN={registration_id}")
    body = {"certificate": cert.read_text(), "reason": "keyCompromise"}
    revoked = call(strong, "POST", "/api/mgmt/v1/revocations", body, {"x-functions-key": str(strong.admin_key)})
    assert revoked.status == 201, revoked.body
    csr = make_csr(tmp_path, registration_id)
    message = refused(enroll(strong, registration_id, csr.b64, attestation=_attestation(cert, key, csr.der, tmp_path)),
                      401, "invalid_credential")  # fmt: skip
    assert "revoked" in message


def test_the_enroll_command_attests_with_a_birth_certificate(strong, factory, tmp_path):
    registration_id = new_id("bccli")
    cert, key = factory.birth_certificate(registration_id, f"/CN={registration_id}")
    run = subprocess.run([sys.executable, "-m", "xboot", "enroll", "--url", strong.url, "--registration-id",
                          registration_id, "--out", str(tmp_path / "d"), "--attest-cert", str(cert),
                          "--attest-key", str(key), "--attest-chain", str(factory.directory / "mfg-ca.crt"), "--json"],
                         capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr


# -- identity lock, renewal, superseding, daily limit ------------------------------------------------------------------


def _xboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xboot", *args], capture_output=True, text=True, cwd=ROOT)


def test_a_second_device_cannot_take_an_enrolled_identity(strong, tmp_path):
    registration_id = new_id("lock")
    assert (
        enroll(strong, registration_id, make_csr(tmp_path / "a", registration_id).b64, sas(registration_id)).status
        == 200
    )
    # Even with a valid device key (a leaked one), a second key for the same ID is refused.
    message = refused(enroll(strong, registration_id, make_csr(tmp_path / "b", registration_id).b64,
                             sas(registration_id)), 409, "identity_exists")  # fmt: skip
    assert "renew" in message and "revoke" in message


def test_renewal_with_the_current_certificate_works_without_other_credentials(strong, tmp_path):
    registration_id = new_id("renew")
    device_key = dps.derive_device_key(GROUP_KEY, registration_id)
    device = tmp_path / "device"
    first = _xboot("enroll", "--url", strong.url, "--registration-id", registration_id, "--out", str(device),
                   "--device-key", device_key, "--json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    old_serial = json.loads(first.stdout)["serialNumber"]
    renewed = _xboot("renew", "--url", strong.url, "--out", str(device), "--force", "--rekey", "--json")
    assert renewed.returncode == 0, renewed.stderr
    # SupersededGraceHours 0: the predecessor is revoked as superseded at once, and listed in the CRL.
    crl = x509.load_der_x509_crl(call(strong, "GET", "/api/crl").body)
    entry = crl.get_revoked_certificate_by_serial_number(int(old_serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.superseded
    again = _xboot("renew", "--url", strong.url, "--out", str(device), "--force", "--json")
    assert again.returncode == 0, again.stderr  # the renewed certificate renews in turn, same key


def test_renewal_with_a_revoked_certificate_is_refused(strong, tmp_path):
    registration_id = new_id("rvk")
    device = tmp_path / "device"
    assert _xboot("enroll", "--url", strong.url, "--registration-id", registration_id, "--out", str(device),
                  "--device-key", dps.derive_device_key(GROUP_KEY, registration_id)).returncode == 0  # fmt: skip
    serial = format(x509.load_pem_x509_certificate((device / "device.crt").read_bytes()).serial_number, "X")
    assert call(strong, "POST", "/api/mgmt/v1/revocations", {"serialNumber": serial, "reason": "keyCompromise"},
                {"x-functions-key": str(strong.admin_key)}).status == 201  # fmt: skip
    renewed = _xboot("renew", "--url", strong.url, "--out", str(device), "--force", "--json", "--retries", "1")
    assert renewed.returncode == 3 and "revoked" in renewed.stdout


def test_revoking_the_lost_certificate_frees_the_identity(strong, tmp_path):
    registration_id = new_id("free")
    first = enroll(strong, registration_id, make_csr(tmp_path / "a", registration_id).b64, sas(registration_id))
    replacement = make_csr(tmp_path / "b", registration_id).b64
    refused(enroll(strong, registration_id, replacement, sas(registration_id)), 409, "identity_exists")
    assert call(strong, "POST", "/api/mgmt/v1/revocations", {"serialNumber": first.json()["serialNumber"],
                "reason": "keyCompromise"}, {"x-functions-key": str(strong.admin_key)}).status == 201  # fmt: skip
    assert enroll(strong, registration_id, replacement, sas(registration_id)).status == 200


def test_a_lost_answer_can_be_asked_again_with_the_same_key(strong, tmp_path):
    registration_id = new_id("lost")
    csr = make_csr(tmp_path, registration_id).b64
    first = enroll(strong, registration_id, csr, sas(registration_id))
    second = enroll(strong, registration_id, csr, sas(registration_id))  # same key: the holder asking again
    assert first.status == second.status == 200
    assert first.json()["serialNumber"] != second.json()["serialNumber"]


def test_the_daily_limit_stops_a_firmware_loop(strong, tmp_path):
    registration_id = new_id("loop")
    csr = make_csr(tmp_path, registration_id).b64  # same key each time: past the lock, up to the limit
    assert [enroll(strong, registration_id, csr, sas(registration_id)).status for _ in range(3)] == [200] * 3
    reply = enroll(strong, registration_id, csr, sas(registration_id))
    refused(reply, 429, "rate_limited")
    assert 80_000 < int(reply.headers["retry-after"]) <= 86_401


# -- FunctionKey (the default, XBoot's behaviour) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compatible(tmp_path_factory) -> LiveServer:
    with start_live_server(tmp_path_factory.mktemp("compatible")) as server:
        yield server


def test_function_key_mode_keeps_xboot_working_and_says_so_loudly(compatible, tmp_path):
    registration_id = new_id("xb")
    csr = make_csr(tmp_path, registration_id).b64
    without = call(compatible, "POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr})
    assert without.status == 401  # the host-level key check, as in Azure
    with_key = call(compatible, "POST", "/api/certificate", {"RegistrationId": registration_id, "Csr": csr},
                    {"x-functions-key": str(compatible.function_key)})  # fmt: skip
    assert with_key.status == 200
    log = compatible.log()
    assert "enrollment authorization: FunctionKey" in log
    assert "anyone holding the function key can enroll any allowed registration ID" in log


# -- reports follow the identity ---------------------------------------------------------------------------------


def test_an_enrolled_device_reports_only_as_itself(strong, tmp_path):
    registration_id = new_id("rep")
    device = tmp_path / "device"
    assert _xboot("enroll", "--url", strong.url, "--registration-id", registration_id, "--out", str(device),
                  "--device-key", dps.derive_device_key(GROUP_KEY, registration_id)).returncode == 0  # fmt: skip
    for gateway_id, expected in ((f"{registration_id}-impostor", 422), (registration_id, 201)):
        report = tmp_path / f"{gateway_id}.json"
        report.write_text(json.dumps({"gatewayId": gateway_id, "timeStamp": "1"}))
        signed = _xboot(
            "sign-report", str(report), "--device", str(device), "--out", str(tmp_path / f"{gateway_id}.signed")
        )
        assert signed.returncode == 0, signed.stderr
        upload = _xboot("upload-report", "--url", strong.url, "--code", str(strong.function_key),
                        str(tmp_path / f"{gateway_id}.signed"), "--kind", "system", "--json")  # fmt: skip
        document = json.loads(upload.stdout)
        if expected == 422:
            assert upload.returncode == 3 and document["error"] == "gateway_mismatch"
        else:
            assert upload.returncode == 0, upload.stdout


# -- the device-key command (factories) ------------------------------------------------------------------------------


def test_the_device_key_command_derives_what_dps_would():
    run = _xboot("device-key", "--group-key", GROUP_KEY, "--registration-id", "sn-1", "--json")
    assert run.returncode == 0
    assert json.loads(run.stdout)["deviceKey"] == dps.derive_device_key(GROUP_KEY, "sn-1")


def test_superseded_entries_wait_for_their_grace():
    from xboot.service.lifecycle.revocation import Revocation, in_effect

    now = dt.datetime.now(dt.UTC)
    later = Revocation(id="x", kind="serial", value="AB", reason="superseded", revoked_at=now + dt.timedelta(hours=24))
    assert in_effect(later, now) is None and in_effect(later, now + dt.timedelta(hours=25)) is later


def test_a_superseded_certificate_stays_valid_for_its_grace_then_enters_the_crl(
    app_env, functions, monkeypatch, tmp_path
):
    """In process, so the CRL can be asked for at a later time: grace 24 h, renewal by the current certificate."""
    import xboot.service.ca.crl as crl_module
    from xboot.service.settings import Settings

    monkeypatch.setenv("SupersededGraceHours", "24")
    key = ec.generate_private_key(ec.SECP256R1())
    registration_id = "dev-grace"

    def csr_for(signing_key: ec.EllipticCurvePrivateKey) -> bytes:
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, registration_id)])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(signing_key, hashes.SHA256())
        return request.public_bytes(serialization.Encoding.DER)

    first = functions.call("POST", "/api/certificate", {"RegistrationId": registration_id,
                                                        "Csr": base64.b64encode(csr_for(key)).decode()})  # fmt: skip
    assert first.status == 200, first.body
    current = x509.load_der_x509_certificate(base64.b64decode(first.json()["certificate"]))
    new_key = ec.generate_private_key(ec.SECP256R1())
    der = csr_for(new_key)
    attestation = {"Certificates": [base64.b64encode(current.public_bytes(serialization.Encoding.DER)).decode()],
                   "Signature": base64.b64encode(key.sign(der, ec.ECDSA(hashes.SHA256()))).decode()}  # fmt: skip
    renewed = functions.call("POST", "/api/certificate", {"RegistrationId": registration_id,
                             "Csr": base64.b64encode(der).decode(), "Attestation": attestation})  # fmt: skip
    assert renewed.status == 200, renewed.body
    settings = Settings.from_environ()
    now = dt.datetime.now(dt.UTC)
    assert crl_module.published_crl(settings, now).der and current.serial_number not in {
        r.serial_number for r in x509.load_der_x509_crl(crl_module.published_crl(settings, now).der)
    }
    # Still the device's certificate during the grace: it can renew again with it.
    listed = functions.call("GET", "/api/mgmt/v1/revocations").json()["revocations"]
    assert [(e["reason"], e["value"]) for e in listed] == [("superseded", format(current.serial_number, "X"))]
    later = crl_module.published_crl(settings, now + dt.timedelta(hours=25))
    assert current.serial_number in {r.serial_number for r in x509.load_der_x509_crl(later.der)}


def test_a_current_certificate_cannot_renew_another_registration_id(strong, tmp_path):
    """Device A's own, valid certificate signs a request for device B: not a renewal of B, whatever A proves."""
    victim = new_id("victim")
    assert enroll(strong, victim, make_csr(tmp_path / "v", victim).b64, sas(victim)).status == 200
    attacker = new_id("attacker")
    device = tmp_path / "attacker"
    assert _xboot("enroll", "--url", strong.url, "--registration-id", attacker, "--out", str(device),
                  "--device-key", dps.derive_device_key(GROUP_KEY, attacker)).returncode == 0  # fmt: skip
    csr = make_csr(tmp_path / "b", victim)
    attestation = _attestation(device / "device.crt", device / "device.key", csr.der, tmp_path, chain=[])
    message = refused(enroll(strong, victim, csr.b64, attestation=attestation), 403, "credential_mismatch")
    assert "another registration ID" in message


# -- the DPS helpers' own refusals (what a malformed header or a bad setting meets first) ----------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [("not base64!", "is not base64"), (base64.b64encode(b"short").decode(), "shorter than 16 bytes")],
)
def test_keys_that_are_not_16_bytes_of_base64_are_refused(key, message):
    with pytest.raises(ValueError, match=message):
        dps.derive_device_key(key, "sn-1")
    with pytest.raises(ValueError, match=message):
        dps.sas_token(key, "sn-1", 1700000000)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer sr=a&sig=b&se=1", "not a SharedAccessSignature token"),
        ("SharedAccessSignature", "not a SharedAccessSignature token"),
        ("SharedAccessSignature sr=a&sr=b&sig=c&se=1", "repeats sr"),
        ("SharedAccessSignature sig=c&se=1", "lacks sr"),
        ("SharedAccessSignature sr=a&se=1", "lacks sig"),
        ("SharedAccessSignature sr=a&sig=c", "lacks se"),
        ("SharedAccessSignature sr=a&sig=c&se=soon", "se is not a Unix time"),
        ("SharedAccessSignature sr=a&sig=c&se=" + "9" * 13, "se is not a Unix time"),
        ("SharedAccessSignature sr=a&sig=c&se=١٢٣", "se is not a Unix time"),
    ],
)
def test_malformed_sas_tokens_are_refused_with_what_is_wrong(header, message):
    with pytest.raises(ValueError, match=message):
        dps.parse_sas_token(header)


def test_a_signature_that_is_not_base64_never_matches():
    token = dps.parse_sas_token(dps.sas_token(GROUP_KEY, "sn-1", 1700000000))
    assert dps.signature_matches(token, GROUP_KEY)
    assert not dps.signature_matches(dps.SasToken(token.resource, "%%%", token.expiry, token.key_name), GROUP_KEY)


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "EnrollmentGroupKeys is required"), (" , ", "EnrollmentGroupKeys is required"),
     ("not base64!", "EnrollmentGroupKeys: the group key is not base64")],
)  # fmt: skip
def test_device_key_settings_that_cannot_work_are_configuration_errors(value, message):
    from xboot.errors import ConfigurationError
    from xboot.service.enrollment.authorization.device_key import device_keys
    from xboot.service.settings import Settings

    with pytest.raises(ConfigurationError, match=message):
        device_keys(Settings({"EnrollmentGroupKeys": value}), "sn-1")


@pytest.mark.parametrize("credentials", ["not base64!", base64.b64encode(b"no-colon").decode(),
                                         base64.b64encode(b"\xff\xfe:x").decode()])  # fmt: skip
def test_malformed_basic_credentials_are_invalid(strong, tmp_path, credentials):
    registration_id = new_id("basic")
    reply = enroll(strong, registration_id, make_csr(tmp_path, registration_id).b64, f"Basic {credentials}")
    assert "not base64 user:password" in refused(reply, 401, "invalid_credential")
