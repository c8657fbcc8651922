"""Device commands: enroll, renew, sign-report, upload-report, fingerprint. Device-side modules only."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from xboot.cli.common import EXIT_OK, Output, UsageError, anchors, client_command, make_client, utc
from xboot.device import (
    ClientError,
    Credentials,
    DeviceFiles,
    DeviceResult,
    enroll_device,
    load_certificate_file,
    load_key_file,
    renew_device,
    write_atomically,
)
from xboot.device.smime import sign_report
from xboot.dps import derive_device_key
from xboot.pki import KEY_TYPES, sha256_fingerprint


def _pfx_password(args: argparse.Namespace, wanted: bool) -> str | None:
    if not wanted:
        return None
    password = args.pfx_password or os.environ.get("XBOOT_PFX_PASSWORD")
    if not password:
        raise UsageError("device.pfx needs a password: --pfx-password or XBOOT_PFX_PASSWORD")
    return password


def _describe_identity(result: DeviceResult) -> tuple[dict[str, Any], str]:
    enrollment = result.enrollment
    assert enrollment is not None  # only called after an enrollment
    issuer = enrollment.certificate.issuer.rfc4514_string()
    document = {
        "registrationId": result.registration_id,
        "serialNumber": enrollment.serial_number,
        "notAfter": utc(enrollment.not_after),
        "sha256Fingerprint": enrollment.fingerprint,
        "issuer": issuer,
        "directory": str(result.directory),
        "files": [str(p) for p in result.files],
    }
    text = (
        f"certificate {enrollment.serial_number} for {result.registration_id}, valid until "
        f"{utc(enrollment.not_after)}\n  issued by {issuer}\n  SHA-256 {enrollment.fingerprint}\n"
        f"  wrote {', '.join(p.name for p in result.files)} in {result.directory}"
    )
    return document, text


def _credentials(args: argparse.Namespace) -> Credentials | None:
    """--device-key, --token or --attest-cert/--attest-key (--attest-chain): at most one (argparse checks)."""
    device_key = args.device_key or os.environ.get("XBOOT_DEVICE_KEY")
    if device_key:
        return Credentials.device_key(device_key, args.registration_id)
    if args.token:
        return Credentials.token(args.token)
    if args.attest_cert or args.attest_key:
        if not (args.attest_cert and args.attest_key):
            raise UsageError("--attest-cert and --attest-key go together")
        chain = load_certificate_file(Path(args.attest_chain)) if args.attest_chain else []
        signer = load_certificate_file(Path(args.attest_cert))[:1]
        return Credentials.certificate([*signer, *chain], load_key_file(Path(args.attest_key)))
    return None


def cmd_device_key(args: argparse.Namespace, out: Output) -> int:
    """A factory's step: the device key of one registration ID, from the group key (as Azure DPS derives it)."""
    group_key = args.group_key or os.environ.get("XBOOT_GROUP_KEY")
    if not group_key:
        raise UsageError("--group-key (or XBOOT_GROUP_KEY) is required")
    try:
        key = derive_device_key(group_key, args.registration_id)
    except ValueError as error:
        raise UsageError(f"--group-key: {error}") from None
    out.result({"registrationId": args.registration_id, "deviceKey": key}, key)
    return EXIT_OK


def cmd_enroll(args: argparse.Namespace, out: Output) -> int:
    files = DeviceFiles(Path(args.out))
    replacing_pfx = args.force and files.pfx.exists()
    password = _pfx_password(args, args.pfx or args.pfx_password is not None or replacing_pfx)
    result = enroll_device(
        make_client(args, out),
        files,
        args.registration_id,
        args.key_type,
        anchors=anchors(args.root_ca) or (),
        pfx_password=password,
        force=args.force,
        credentials=_credentials(args),
        on_step=out.step,
    )
    document, text = _describe_identity(result)
    out.result(document, "enrolled: " + text)
    return EXIT_OK


def cmd_renew(args: argparse.Namespace, out: Output) -> int:
    files = DeviceFiles(Path(args.out))
    password = _pfx_password(args, files.pfx.exists() or args.pfx_password is not None)
    result = renew_device(
        make_client(args, out),
        files,
        within=dt.timedelta(days=args.within_days),
        force=args.force,
        rekey=args.rekey,
        key_type=args.key_type,
        anchors=anchors(args.root_ca),
        pfx_password=password,
        on_step=out.step,
    )
    previous = utc(result.previous_not_after)
    if result.enrollment is None:
        out.result(
            {"renewed": False, "registrationId": result.registration_id, "notAfter": previous},
            f"not renewing {result.registration_id}: valid until {previous}, more than {args.within_days} days away "
            "(--force renews now)",
        )
        return EXIT_OK
    document, text = _describe_identity(result)
    document.update({"renewed": True, "rekeyed": result.rekeyed, "previousNotAfter": previous})
    out.result(document, f"renewed{' with a new key' if result.rekeyed else ''}: {text} (previous files kept as .bak)")
    return EXIT_OK


def cmd_sign_report(args: argparse.Namespace, out: Output) -> int:
    device = DeviceFiles(Path(args.device)) if args.device else None
    cert = Path(args.cert) if args.cert else device and device.certificate
    key = Path(args.key) if args.key else device and device.key
    chain = Path(args.chain) if args.chain else device and device.chain
    if cert is None or key is None:
        raise UsageError("give --cert and --key (and --chain), or --device DIR")
    source = Path(args.report)
    try:
        data = source.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {source}: {error.strerror}") from None
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise ClientError(f"{source} is not a UTF-8 JSON object: the service only accepts JSON reports")
    certificate = load_certificate_file(cert)[0]
    extra = load_certificate_file(chain) if args.chain or (chain is not None and chain.exists()) else []
    try:
        signed = sign_report(data, certificate, load_key_file(key), extra)
    except ValueError as error:
        raise ClientError(f"{key}: {error}") from None
    target = Path(args.out) if args.out else source.with_name(source.name + ".signed")
    write_atomically(target, signed, 0o644)
    signer = certificate.subject.rfc4514_string()
    out.result(
        {"report": str(source), "signed": str(target), "signer": signer, "chainCertificates": len(extra)},
        f"signed {source} as {signer} (+{len(extra)} chain certificates) -> {target}",
    )
    return EXIT_OK


def cmd_upload_report(args: argparse.Namespace, out: Output) -> int:
    source = Path(args.signed)
    try:
        signed = source.read_bytes()
    except OSError as error:
        raise ClientError(f"cannot read {source}: {error.strerror}") from None
    client = make_client(args, out)
    out.step(f"uploading {source} as a {args.kind} report to {client.base_url}")
    answer = client.upload_report(signed, args.kind, source.name)
    detail = ""
    if isinstance(answer, dict) and answer.get("id"):
        detail = f" as {answer['id']}" + (" (already uploaded before)" if answer.get("duplicate") else "")
    out.result(
        {"uploaded": str(source), "kind": args.kind, "response": answer},
        f"{args.kind} report {source} accepted{detail}",
    )
    return EXIT_OK


def cmd_fingerprint(args: argparse.Namespace, out: Output) -> int:
    rows = [
        {"file": name, "subject": c.subject.rfc4514_string(), "sha256Fingerprint": sha256_fingerprint(c)}
        for name in args.certificates
        for c in load_certificate_file(Path(name))
    ]
    out.result(rows, "\n".join(row["sha256Fingerprint"] for row in rows))
    return EXIT_OK


def add_commands(
    commands: Any, network: argparse.ArgumentParser, code: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--out", required=True, help="device folder: device.key, device.crt, chain.pem, device.pfx")
    device.add_argument("--root-ca", action="append", help="expected root CA (PEM/DER): the chain must lead to it")
    device.add_argument("--pfx-password", help="password of device.pfx (env XBOOT_PFX_PASSWORD)")
    common = [network, code, device, as_json]

    enroll = commands.add_parser("enroll", parents=common, help="make a device key and enroll it")
    enroll.add_argument("--registration-id", required=True, help="the device's registration ID (certificate CN)")
    enroll.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="device key (default ec-p256)")
    enroll.add_argument("--pfx", action="store_true", help="also write device.pfx (PKCS#12) for Azure IoT SDKs")
    enroll.add_argument("--force", action="store_true", help="replace an identity already in --out (kept as .bak)")
    proof = enroll.add_mutually_exclusive_group()
    proof.add_argument("--device-key", help="DPS-derived device key: sends a SAS token (env XBOOT_DEVICE_KEY)")
    proof.add_argument("--token", help="a one-time enrollment token (JWT) from the operator")
    proof.add_argument("--attest-cert", help="a certificate the device holds (birth certificate) to sign the request")
    enroll.add_argument("--attest-key", help="the key of --attest-cert")
    enroll.add_argument("--attest-chain", help="intermediate CA certificates above --attest-cert (PEM)")
    enroll.set_defaults(handler=client_command(cmd_enroll))

    device_key = commands.add_parser(
        "device-key", parents=[as_json], help="derive a device's key from an enrollment group key (factory)"
    )
    device_key.add_argument("--group-key", help="the enrollment group key, base64 (env XBOOT_GROUP_KEY)")
    device_key.add_argument("--registration-id", required=True, help="the device's registration ID")
    device_key.set_defaults(handler=client_command(cmd_device_key))

    renew = commands.add_parser("renew", parents=common, help="re-enroll an enrolled device before it expires")
    renew.add_argument("--within-days", type=int, default=30, help="renew when expiring within N days (default 30)")
    renew.add_argument("--force", action="store_true", help="renew now, however long the certificate has left")
    renew.add_argument("--rekey", action="store_true", help="make a new key instead of reusing device.key")
    renew.add_argument("--key-type", choices=KEY_TYPES, help="type of the new key with --rekey (default: same)")
    renew.set_defaults(handler=client_command(cmd_renew))

    sign = commands.add_parser("sign-report", parents=[as_json], help="sign a JSON report (S/MIME, detached)")
    sign.add_argument("report", help="the report, a JSON file")
    sign.add_argument("--cert", help="signing certificate (default DIR/device.crt with --device)")
    sign.add_argument("--key", help="its private key (default DIR/device.key with --device)")
    sign.add_argument("--chain", help="CA certificates to include (default DIR/chain.pem with --device)")
    sign.add_argument("--device", help="an enrolled device folder, instead of --cert/--key/--chain")
    sign.add_argument("--out", help="where to write the signed report (default REPORT.signed)")
    sign.set_defaults(handler=client_command(cmd_sign_report))

    upload = commands.add_parser("upload-report", parents=[network, code, as_json], help="upload a signed report")
    upload.add_argument("signed", help="a signed report from sign-report (or openssl cms -sign)")
    upload.add_argument(
        "--kind", default="system", choices=("system", "update"), help="system (default) or update report"
    )
    upload.set_defaults(handler=client_command(cmd_upload_report))

    fingerprint = commands.add_parser("fingerprint", parents=[as_json], help="SHA-256 fingerprints of certificates")
    fingerprint.add_argument("certificates", nargs="+", metavar="CERT", help="PEM (any number of certificates) or DER")
    fingerprint.set_defaults(handler=client_command(cmd_fingerprint))
