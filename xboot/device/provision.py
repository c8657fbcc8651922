"""First enrollment and renewal of a device: a key made here, files written only after verification."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from xboot.device.client import XbootClient
from xboot.device.credentials import Credentials
from xboot.device.enrollment import Enrollment, key_type_of, renewal_due
from xboot.device.errors import ClientError
from xboot.device.files import DeviceFiles, DeviceIdentity
from xboot.pki import KEY_TYPES, generate_key


@dataclass(frozen=True)
class DeviceResult:
    """What `enroll_device` / `renew_device` did; `enrollment` is None when renewal was not due."""

    directory: Path
    registration_id: str
    enrollment: Enrollment | None
    files: tuple[Path, ...] = ()
    previous_not_after: dt.datetime | None = None
    rekeyed: bool = False


def _no_steps(message: str) -> None:
    """Default progress sink: the library does not print."""


def enroll_device(
    client: XbootClient,
    files: DeviceFiles,
    registration_id: str,
    key_type: str = "ec-p256",
    *,
    anchors: Sequence[x509.Certificate] = (),
    pfx_password: str | None = None,
    force: bool = False,
    credentials: Credentials | None = None,
    on_step: Callable[[str], None] = _no_steps,
) -> DeviceResult:
    """First enrollment: a new key made here, a verified certificate, files written only after verification.

    `credentials` is what the service's EnrollmentAuthorization asks for (device key, token, birth
    certificate); without any, only a service that accepts the function key alone will enroll.
    """
    if files.exists() and not force:
        raise ClientError(
            f"{files.directory} already holds a device identity: use xboot renew (or --force to replace it)"
        )
    if key_type not in KEY_TYPES:
        raise ClientError(f"unknown key type {key_type}; use one of {', '.join(KEY_TYPES)}")
    files.check_pfx_password(pfx_password)
    on_step(f"generating the device key ({key_type})")
    key = generate_key(key_type)
    on_step(f"requesting a certificate for {registration_id} from {client.base_url}")
    enrollment = client.enroll(registration_id, key, anchors, credentials)
    on_step(f"certificate {enrollment.serial_number} verified; writing {files.directory}")
    written = files.save(DeviceIdentity(key, enrollment.certificate, enrollment.chain), pfx_password)
    return DeviceResult(files.directory, registration_id, enrollment, tuple(written))


def renew_device(
    client: XbootClient,
    files: DeviceFiles,
    *,
    within: dt.timedelta = dt.timedelta(days=30),
    force: bool = False,
    rekey: bool = False,
    key_type: str | None = None,
    anchors: Sequence[x509.Certificate] | None = None,
    pfx_password: str | None = None,
    on_step: Callable[[str], None] = _no_steps,
) -> DeviceResult:
    """Re-enroll with the same registration ID once the certificate is within `within` of expiry.

    The current certificate and key always sign the request (the service's proof of a renewal, which it
    accepts whatever its EnrollmentAuthorization), also with `rekey`, where the new key is in the CSR.
    The current key is reused unless `rekey`. Without `anchors`, the new chain must lead to the
    top certificate of the current chain.pem: a renewal cannot silently move the device to
    another root. Nothing is written until the new certificate has been verified.
    """
    if not files.exists():
        raise ClientError(f"{files.directory} holds no device identity (device.key, device.crt): enroll it first")
    current = files.load()
    registration_id = current.registration_id
    previous = current.certificate.not_valid_after_utc
    files.check_pfx_password(pfx_password)
    if not force and not renewal_due(current.certificate, within):
        return DeviceResult(files.directory, registration_id, None, previous_not_after=previous)
    if anchors is None:
        anchors = current.chain[-1:]
    key = current.key
    if rekey:
        new_type = key_type or key_type_of(current.key)
        on_step(f"generating a new device key ({new_type})")
        key = generate_key(new_type)
    on_step(f"renewing {registration_id} (expires {previous:%Y-%m-%d %H:%M} UTC) at {client.base_url}")
    proof = Credentials.certificate([current.certificate], current.key)
    enrollment = client.enroll(registration_id, key, anchors, proof)
    on_step(f"certificate {enrollment.serial_number} verified; replacing files in {files.directory} (old kept as .bak)")
    written = files.save(DeviceIdentity(key, enrollment.certificate, enrollment.chain), pfx_password)
    return DeviceResult(files.directory, registration_id, enrollment, tuple(written), previous, rekey)
