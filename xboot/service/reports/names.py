"""RFC 5280 section 4.2.1.10 name constraints, applied on a verified path.

Every CA on the path that carries nameConstraints (critical or not: a constrained CA's limits bind what
it issued either way) constrains the certificates below it, except self-issued intermediates. Names
checked: the subject DN (directoryName, and its emailAddress attributes as rfc822Name) and every
subjectAltName entry of the forms below. A name of a constrained form must be inside a permitted subtree
of that form when any is given, and inside no excluded subtree.

Forms: directoryName (RDN prefix), rfc822Name (a mailbox, a host, or `.domain` for any host below it),
dNSName (the name itself or any name below it, label by label), uniformResourceIdentifier (its host, as
a host or `.domain`), iPAddress (the network). A constraint of any other form cannot be checked and is
refused: a verifier that ignored it would accept what the CA may not have allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

_FORMS = (x509.DirectoryName, x509.RFC822Name, x509.DNSName, x509.UniformResourceIdentifier, x509.IPAddress)


class NameConstraintViolation(ValueError):
    """A name outside what a CA on the path may certify, or a constraint this validator cannot check."""


def _dns_within(name: str, constraint: str) -> bool:
    name, constraint = name.lower().rstrip("."), constraint.lower().rstrip(".")
    if not constraint:
        return True
    if constraint.startswith("."):  # a common spelling of "any name below": not the domain itself
        return name.endswith(constraint)
    return name == constraint or name.endswith("." + constraint)


def _host_within(host: str, constraint: str) -> bool:
    host, constraint = host.lower(), constraint.lower()
    if constraint.startswith("."):
        return host.endswith(constraint)
    return host == constraint


def _email_within(address: str, constraint: str) -> bool:
    if "@" in constraint:  # one mailbox
        local, _, domain = constraint.rpartition("@")
        name_local, _, name_domain = address.rpartition("@")
        return name_local == local and name_domain.lower() == domain.lower()
    return _host_within(address.rpartition("@")[2], constraint)


def _directory_within(name: x509.Name, constraint: x509.Name) -> bool:
    prefix = list(constraint.rdns)
    return list(name.rdns)[: len(prefix)] == prefix


def _within(name: x509.GeneralName, subtree: x509.GeneralName) -> bool:
    if isinstance(name, x509.DirectoryName):
        return _directory_within(name.value, subtree.value)
    if isinstance(name, x509.RFC822Name):
        return _email_within(name.value, subtree.value)
    if isinstance(name, x509.DNSName):
        return _dns_within(name.value, subtree.value)
    if isinstance(name, x509.UniformResourceIdentifier):
        host = urlsplit(name.value).hostname
        return host is not None and _host_within(host, subtree.value)  # no host: within no subtree
    network = subtree.value  # an IPAddress, the last of _FORMS (check() refuses constraints of other forms)
    return isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and (
        isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address)
        and name.value.version == network.version
        and name.value in network
    )


def names_of(certificate: x509.Certificate, alternative: x509.SubjectAlternativeName | None) -> list[x509.GeneralName]:
    """The names a constraint applies to: the subject (and its emailAddress attributes) and the SAN entries."""
    names: list[x509.GeneralName] = []
    if len(certificate.subject):
        names.append(x509.DirectoryName(certificate.subject))
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
        names.append(x509.RFC822Name(str(attribute.value)))
    if alternative is not None:
        names.extend(alternative)
    return names


def check(names: Iterable[x509.GeneralName], constraints: x509.NameConstraints, who: str, ca: str) -> None:
    """Refuse any of `names` that `constraints` (of the CA `ca`) do not allow; `who` is named in the message."""
    permitted = list(constraints.permitted_subtrees or ())
    excluded = list(constraints.excluded_subtrees or ())
    for subtree in (*permitted, *excluded):
        if not isinstance(subtree, _FORMS):
            raise NameConstraintViolation(f"{ca} has a name constraint of a form this service cannot check")
    for name in names:
        same_form = [s for s in permitted if type(s) is type(name)]
        if same_form and not any(_within(name, s) for s in same_form):
            raise NameConstraintViolation(f"{who}: {_show(name)} is outside the names {ca} may certify")
        if any(type(s) is type(name) and _within(name, s) for s in excluded):
            raise NameConstraintViolation(f"{who}: {_show(name)} is a name {ca} may not certify")


def _show(name: x509.GeneralName) -> str:
    value = name.value.rfc4514_string() if isinstance(name, x509.DirectoryName) else str(name.value)
    return f"{type(name).__name__} {value[:120]}"
