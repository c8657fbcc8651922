"""Operator commands: trust anchors, revocation, issued certificates, the CRL. Device-side modules only."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from xboot.cli.common import EXIT_OK, Output, UsageError, client_command, make_client, utc
from xboot.device import (
    VerificationFailed,
    load_certificate_file,
    normalize_fingerprint,
    write_atomically,
)
from xboot.pki import sha256_fingerprint


def _wanted_fingerprints(args: argparse.Namespace) -> list[str]:
    wanted = [normalize_fingerprint(f) for f in args.fingerprints]
    wanted += [sha256_fingerprint(c) for name in args.cert or () for c in load_certificate_file(Path(name))]
    if not wanted:
        raise UsageError("give fingerprints and/or --cert FILE")
    return list(dict.fromkeys(wanted))


def cmd_trust(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args, out)
    if args.action == "get":
        values = client.trusted_fingerprints()
    elif args.action == "set":
        values = client.set_trusted_fingerprints(_wanted_fingerprints(args))
    else:  # add: read, merge, write (the API only replaces the whole list)
        current = client.trusted_fingerprints()
        values = client.set_trusted_fingerprints(list(dict.fromkeys([*current, *_wanted_fingerprints(args)])))
    issuing_ca = client.issuing_ca_trusted()
    note = "this service's own issuing CA is trusted too (TrustIssuingCa)" if issuing_ca else ""
    text = "\n".join(values) if values else "(no fingerprints in the list)"
    out.result({"value": values, "issuingCaTrusted": issuing_ca}, f"{text}\n{note}".rstrip())
    return EXIT_OK


def _revocation_line(entry: dict[str, Any]) -> str:
    known = f", device {entry['registrationId']}" if entry.get("registrationId") else ""
    serials = entry.get("serialNumbers") or []
    crl = f"{len(serials)} certificate(s) in the CRL" if serials else "not in the CRL"
    return (
        f"{entry.get('id')}  {entry.get('kind')} {entry.get('value')}  {entry.get('reason')}  {entry.get('revokedAt')}"
        f"  ({crl}{known})"
    )


def cmd_revoke(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args, out)
    if args.list:
        entries = client.revocations()
        lines = [_revocation_line(e) for e in entries]
        counts: dict[str, int] = {}
        for entry in entries:  # a CRL lists only its CA's serials: say whose each entry's are
            issuer = entry.get("issuerSha256Fingerprint") or ("no CA (by fingerprint)" if not entry.get(
                "serialNumbers") else "a CA before issuers were recorded")  # fmt: skip
            counts[issuer] = counts.get(issuer, 0) + 1
        lines += [f"  {count} entries: {issuer}" for issuer, count in counts.items()]
        out.result(entries, "\n".join(lines) or "(nothing is revoked)")
        return EXIT_OK
    if args.cert:
        certificate = load_certificate_file(Path(args.cert))[0]
        selector, value = "certificate", certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
    elif args.fingerprint:
        selector, value = "fingerprint", normalize_fingerprint(args.fingerprint)
    elif args.serial:
        selector, value = "serialNumber", args.serial
    else:
        selector, value = "registrationId", args.registration_id
    entry = client.revoke(selector, value, args.reason)
    if entry.get("kind") == "serial" and not entry.get("registrationId"):
        out.warn(
            f"serial {entry.get('value')} is not in the issuance records: it is in the CRL, but no device is known"
        )
    if entry.get("kind") == "fingerprint" and not entry.get("serialNumbers"):
        out.warn("not a certificate this CA issued (or given only by fingerprint): refused wherever it is presented, "
                 "but not in the CRL; use --serial or --cert for one of this CA's certificates")  # fmt: skip
    state = "already revoked" if entry.get("duplicate") else "revoked"
    out.result(entry, f"{state}: {_revocation_line(entry)}")
    return EXIT_OK


def cmd_unrevoke(args: argparse.Namespace, out: Output) -> int:
    entry = make_client(args, out).remove_revocation(args.id)
    out.result(entry, f"hold removed: {entry.get('kind')} {entry.get('value')} is no longer revoked")
    return EXIT_OK


def _certificate_state(item: dict[str, Any]) -> str:
    if item.get("revoked"):
        return f"revoked ({(item.get('revocation') or {}).get('reason')})"
    return "expired" if item.get("expired") else "valid"


def _days(text: str) -> int:
    """`30d`, `30` (days), `2w` (weeks)."""
    found = re.fullmatch(r"([0-9]{1,5})([dw]?)", text.strip().lower())
    if found is None:
        raise UsageError(f"not a number of days (e.g. 30d, 2w): {text!r}")
    return int(found[1]) * (7 if found[2] == "w" else 1)


def cmd_certificates(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args, out)
    fleet = not args.registration_id
    if fleet and args.expiring_within is None and args.status is None:
        raise UsageError("give --registration-id, or --expiring-within / --status for the whole fleet")
    days = None if args.expiring_within is None else _days(args.expiring_within)
    document = client.certificates(args.registration_id, expiring_within_days=days, status=args.status)
    items = document["certificates"]
    if not fleet:
        items = sorted(items, key=lambda c: str(c.get("issuedAt")), reverse=True)
    lines = [f"no certificates recorded for {args.registration_id}" if not fleet else "no certificates match"]
    if items:
        device = f"{'registration ID':<34} " if fleet else ""
        lines = [f"{device}{'serial':<34} {'not after':<21} {'state':<28} SHA-256 fingerprint"]
        lines += [
            (f"{c.get('registrationId')!s:<34} " if fleet else "")
            + f"{c.get('serialNumber')!s:<34} {str(c.get('notAfter'))[:19]:<21} {_certificate_state(c):<28} "
            f"{c.get('sha256Fingerprint')}"
            for c in items
        ]
    held = document.get("registrationRevoked")
    if held:
        lines.append(f"registration {args.registration_id} is revoked ({held.get('reason')}): it cannot enroll")
    out.result({**document, "certificates": items}, "\n".join(lines))
    return EXIT_OK


def cmd_reports(args: argparse.Namespace, out: Output) -> int:
    if bool(args.gateway_id) == bool(args.since):
        raise UsageError("give --gateway-id (one gateway's reports) or --since (every gateway's)")
    document = make_client(args, out).reports(args.kind, gateway_id=args.gateway_id, since=args.since, until=args.until)
    items = document["reports"]
    lines = [f"{'received':<25} {'gateway':<34} id"] if items else ["no reports match"]
    lines += [f"{r.get('receivedAt')!s:<25} {r.get('gatewayId')!s:<34} {r.get('id')}" for r in items]
    out.result(document, "\n".join(lines))
    return EXIT_OK


def cmd_crl(args: argparse.Namespace, out: Output) -> int:
    crl = make_client(args, out).crl()
    if args.issuer:
        issuers = load_certificate_file(Path(args.issuer))
        if not any(c.subject == crl.issuer and crl.is_signature_valid(c.public_key()) for c in issuers):
            raise VerificationFailed(f"the CRL is not signed by a certificate in {args.issuer}")
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    document = {
        "issuer": crl.issuer.rfc4514_string(),
        "crlNumber": number,
        "thisUpdate": utc(crl.last_update_utc),
        "nextUpdate": None if crl.next_update_utc is None else utc(crl.next_update_utc),
        "revoked": [format(r.serial_number, "X") for r in crl],
        "signatureVerified": bool(args.issuer),
    }
    text = f"CRL {number} of {document['issuer']}: {len(crl)} revoked, next update {document['nextUpdate']}"
    if args.out:
        encoding = serialization.Encoding.PEM if args.pem else serialization.Encoding.DER
        write_atomically(Path(args.out), crl.public_bytes(encoding), 0o644)
        document["file"] = args.out
        text += f"; wrote {args.out}"
    out.result(document, text)
    return EXIT_OK


def add_commands(commands: Any, network: argparse.ArgumentParser, as_json: argparse.ArgumentParser) -> None:
    trust = commands.add_parser("trust", help="the report trust anchors (certificate fingerprints)")
    actions = trust.add_subparsers(dest="action", required=True)
    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin-key", help="the app's admin (master) key (env XBOOT_ADMIN_KEY)")
    for action, text in (
        ("get", "print the trusted fingerprints"),
        ("set", "replace the list with these fingerprints"),
        ("add", "add these fingerprints to the list"),
    ):
        sub = actions.add_parser(action, parents=[network, admin, as_json], help=text)
        if action != "get":
            sub.add_argument("fingerprints", nargs="*", metavar="FINGERPRINT", help="BB:EA:... (colons optional)")
            sub.add_argument("--cert", action="append", help="trust every certificate in this file (repeatable)")
        sub.set_defaults(handler=client_command(cmd_trust))

    revoke = commands.add_parser(
        "revoke", parents=[network, admin, as_json], help="revoke a certificate or a device (or --list revocations)"
    )
    target = revoke.add_mutually_exclusive_group(required=True)
    target.add_argument("--serial", help="a certificate of this CA by serial number (hex, colons optional)")
    target.add_argument("--fingerprint", help="a certificate by SHA-256 fingerprint (any CA; not put in the CRL)")
    target.add_argument("--registration-id", help="a device: all its certificates, and it cannot enroll again")
    target.add_argument("--cert", help="a certificate file (PEM/DER): by fingerprint, and in the CRL if ours")
    target.add_argument("--list", action="store_true", help="print every revocation instead")
    revoke.add_argument(
        "--reason",
        default="unspecified",
        help="RFC 5280 reason: unspecified (default), keyCompromise, superseded, cessationOfOperation, "
        "certificateHold (removable with unrevoke), privilegeWithdrawn, affiliationChanged, ...",
    )
    revoke.set_defaults(handler=client_command(cmd_revoke))

    unrevoke = commands.add_parser("unrevoke", parents=[network, admin, as_json], help="end a certificateHold")
    unrevoke.add_argument("id", help="the revocation id (from revoke or revoke --list)")
    unrevoke.set_defaults(handler=client_command(cmd_unrevoke))

    certificates = commands.add_parser(
        "certificates", parents=[network, admin, as_json], help="what a device was issued, and what is revoked"
    )
    certificates.add_argument("--registration-id", help="the device's registration ID")
    certificates.add_argument(
        "--expiring-within", metavar="DAYS", help="the fleet's certificates valid now that expire within, e.g. 30d"
    )
    certificates.add_argument(
        "--status", choices=("valid", "expired", "revoked"), help="only certificates in this state"
    )
    certificates.set_defaults(handler=client_command(cmd_certificates))

    reports = commands.add_parser(
        "reports", parents=[network, admin, as_json], help="stored reports: one gateway's, or the fleet's by time"
    )
    reports.add_argument("--kind", choices=("system", "update"), default="system", help="which reports (system)")
    reports.add_argument("--gateway-id", help="one gateway's reports, newest first")
    reports.add_argument("--since", help="every gateway's reports received since (ISO 8601, e.g. 2026-12-01)")
    reports.add_argument("--until", help="... and before (default: now)")
    reports.set_defaults(handler=client_command(cmd_reports))

    crl = commands.add_parser("crl", parents=[network, as_json], help="download the CRL (no key needed)")
    crl.add_argument("--out", help="write it to this file (DER unless --pem)")
    crl.add_argument("--pem", action="store_true", help="write PEM instead of DER")
    crl.add_argument("--issuer", help="the issuing CA certificate: refuse a CRL it did not sign")
    crl.set_defaults(handler=client_command(cmd_crl))
