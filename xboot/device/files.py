"""A device's folder: key, certificate, chain and PFX, each written atomically, the old kept as .bak."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from xboot.device.errors import ClientError
from xboot.device.smime import key_matches
from xboot.pki import PrivateKey, common_name


def load_certificate_file(path: Path) -> list[x509.Certificate]:
    """PEM (one or more certificates) or DER; a ClientError naming the file otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ClientError(f"{path} is not a PEM or DER X.509 certificate") from None


def load_key_file(path: Path) -> PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, None)
        else:
            key = serialization.load_der_private_key(data, None)
    except TypeError:
        raise ClientError(f"{path} is an encrypted key; xboot needs it unencrypted") from None
    except ValueError:
        raise ClientError(f"{path} is not a PEM or DER private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ClientError(f"{path}: only RSA and EC keys are supported")
    return key


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class DeviceIdentity:
    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def registration_id(self) -> str:
        name = common_name(self.certificate.subject)
        if name is None:
            raise ClientError("the device certificate has no single CN to take the registration ID from")
        return name


@dataclass(frozen=True)
class DeviceFiles:
    """A device's folder: device.key (0600), device.crt, chain.pem (CA certificates) and device.pfx (0600)."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "device.key"

    @property
    def certificate(self) -> Path:
        return self.directory / "device.crt"

    @property
    def chain(self) -> Path:
        return self.directory / "chain.pem"

    @property
    def pfx(self) -> Path:
        return self.directory / "device.pfx"

    def exists(self) -> bool:
        return self.key.exists() or self.certificate.exists()

    def check_pfx_password(self, pfx_password: str | None) -> None:
        """A device.pfx left behind would hold the old certificate: it is replaced too, so its password is needed."""
        if self.pfx.exists() and not pfx_password:
            raise ClientError(f"{self.pfx} exists: give its password so that it is replaced along with the certificate")

    def load(self) -> DeviceIdentity:
        key = load_key_file(self.key)
        certificate = load_certificate_file(self.certificate)[0]
        chain = tuple(load_certificate_file(self.chain)) if self.chain.exists() else ()
        if not key_matches(certificate, key):
            raise ClientError(f"{self.certificate} does not belong to {self.key}")
        return DeviceIdentity(key, certificate, chain)

    def save(self, identity: DeviceIdentity, pfx_password: str | None = None) -> list[Path]:
        """Write every file, each atomically; a file being replaced is kept first as NAME.bak (same mode)."""
        self.check_pfx_password(pfx_password)
        pem = serialization.Encoding.PEM
        outputs: list[tuple[Path, bytes, int]] = [
            (
                self.key,
                identity.key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                0o600,
            ),
            (self.certificate, identity.certificate.public_bytes(pem), 0o644),
            (self.chain, b"".join(c.public_bytes(pem) for c in identity.chain), 0o644),
        ]
        if pfx_password:
            pfx = pkcs12.serialize_key_and_certificates(
                identity.registration_id.encode(),
                identity.key,
                identity.certificate,
                list(identity.chain) or None,
                serialization.BestAvailableEncryption(pfx_password.encode()),
            )
            outputs.append((self.pfx, pfx, 0o600))
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for path, _, mode in outputs:
            if path.exists():
                write_atomically(path.with_name(path.name + ".bak"), path.read_bytes(), mode)
        for path, data, mode in outputs:
            write_atomically(path, data, mode)
        return [path for path, _, _ in outputs]
