"""The device side of xboot: what XBoot.Client did, for Python devices and operators' laptops.

A device makes its key (it never leaves), sends a CSR with CN = registration ID, and
accepts the certificate only once it matches the key and chains to the CA the service
named. Device files are written atomically, previous versions kept as `.bak`. Reports
are signed here and uploaded; operators manage trust anchors and revocations.

Only the standard library and `cryptography` are imported here (no Azure SDK, no
service module): `pip install xboot` is all a device needs. This package's names are
the SDK's public API.
"""

from xboot.device.client import REPORT_KINDS, REVOCATION_SELECTORS, XbootClient, normalize_fingerprint
from xboot.device.credentials import Credentials
from xboot.device.enrollment import Enrollment, build_csr, renewal_due, verify_enrollment
from xboot.device.errors import ClientError, ServerRefused, ServerUnavailable, VerificationFailed
from xboot.device.files import DeviceFiles, DeviceIdentity, load_certificate_file, load_key_file, write_atomically
from xboot.device.provision import DeviceResult, enroll_device, renew_device
from xboot.device.transport import RetryNotice, RetryPolicy, is_loopback_or_https, split_service_url
from xboot.pki import KEY_TYPES, generate_key

__all__ = [
    "KEY_TYPES",
    "REPORT_KINDS",
    "REVOCATION_SELECTORS",
    "ClientError",
    "Credentials",
    "DeviceFiles",
    "DeviceIdentity",
    "DeviceResult",
    "Enrollment",
    "RetryNotice",
    "RetryPolicy",
    "ServerRefused",
    "ServerUnavailable",
    "VerificationFailed",
    "XbootClient",
    "build_csr",
    "enroll_device",
    "generate_key",
    "is_loopback_or_https",
    "load_certificate_file",
    "load_key_file",
    "normalize_fingerprint",
    "renew_device",
    "renewal_due",
    "split_service_url",
    "verify_enrollment",
    "write_atomically",
]
