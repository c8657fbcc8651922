"""The identity lock, the daily limit and superseding, called directly on a device's real audit records.

test_enrollment_authorization.py drives them over HTTP through `xboot serve`; here each rule meets the
records it decides on, in process, so every branch has a test of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import make_csr
from xboot.errors import BackendUnavailable, Conflict, TooManyRequests
from xboot.service.enrollment.authorization import Grant
from xboot.service.enrollment.identity import check_identity, history, supersede_predecessors
from xboot.service.lifecycle import revocation
from xboot.service.lifecycle.audit import audit_key
from xboot.service.settings import Settings
from xboot.service.storage import open_data_store

GRANT = Grant("FunctionKey")


def _settings(**values: str) -> Settings:
    return Settings({**os.environ, **values})


@pytest.fixture
def device(app_env, functions, tmp_path, monkeypatch):
    """Two certificates of one registration ID (issued with the lock off), and the store holding them."""
    monkeypatch.setenv("IdentityLock", "false")
    monkeypatch.setenv("MaxCertificatesPerDay", "0")
    for number in range(2):
        csr = make_csr(tmp_path / str(number), "dev-rules")
        assert functions.call("POST", "/api/certificate", {"RegistrationId": "dev-rules", "Csr": csr.b64}).status == 200
    store = open_data_store(_settings())
    records = sorted(history(store, "dev-rules"), key=lambda r: r["issuedAt"])
    assert len(records) == 2
    return store, records


def _key_of(record: dict):
    return x509.load_pem_x509_certificate(record["certificate"].encode()).public_key()


def _rewrite(store, record: dict, **changes: str) -> dict:
    changed = {**record, **changes}
    store.replace(audit_key(record["registrationId"], record["serialNumber"]), json.dumps(changed).encode())
    return changed


def _other_key():
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def test_the_lock_refuses_another_key_while_a_certificate_is_valid(device):
    store, _ = device
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(Conflict) as refused:
        check_identity("dev-rules", _other_key(), GRANT, store, _settings(IdentityLock="true"), now)
    assert refused.value.code == "identity_exists"
    assert check_identity("dev-rules", _other_key(), GRANT, store, _settings(IdentityLock="false"), now) == []


def test_the_holder_of_a_valid_certificates_key_may_ask_again(device):
    """Its first answer was lost: the same key proves it is the same device."""
    store, records = device
    now = dt.datetime.now(dt.UTC)
    past = (now - dt.timedelta(days=1)).isoformat()
    _rewrite(store, records[0], notAfter=past)  # one valid certificate left, whose key asks again
    assert len(check_identity("dev-rules", _key_of(records[1]), GRANT, store, _settings(IdentityLock="true"), now)) == 2


def test_expired_certificates_do_not_hold_the_identity(device):
    store, records = device
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    for record in records:
        _rewrite(store, record, notAfter=past)
    settings = _settings(IdentityLock="true")
    assert len(check_identity("dev-rules", _other_key(), GRANT, store, settings, dt.datetime.now(dt.UTC))) == 2


def test_the_daily_limit_counts_the_last_24_hours_only(device):
    store, records = device
    now = dt.datetime.now(dt.UTC)
    limited = _settings(IdentityLock="false", MaxCertificatesPerDay="2")
    with pytest.raises(TooManyRequests) as refused:
        check_identity("dev-rules", _other_key(), GRANT, store, limited, now)
    assert 86_000 < refused.value.retry_after <= 86_401  # until the older of the two is a day old
    _rewrite(store, records[0], issuedAt=(now - dt.timedelta(days=1, seconds=1)).isoformat())
    assert len(check_identity("dev-rules", _other_key(), GRANT, store, limited, now)) == 2


def test_with_no_lock_and_no_limit_nothing_is_read(device):
    """XBoot's own behaviour: not even a damaged record stops an enrollment."""
    store, records = device
    _rewrite(store, records[0], issuedAt="yesterday-ish")
    open_rules = _settings(IdentityLock="false", MaxCertificatesPerDay="0")
    assert check_identity("dev-rules", _other_key(), GRANT, store, open_rules, dt.datetime.now(dt.UTC)) == []
    with pytest.raises(BackendUnavailable, match="no readable issuedAt"):
        check_identity("dev-rules", _other_key(), GRANT, store, _settings(MaxCertificatesPerDay="5"),
                       dt.datetime.now(dt.UTC))  # fmt: skip


def test_a_renewal_supersedes_the_other_valid_certificates_only(device):
    _, (old, renewed) = device
    settings = _settings(SupersededGraceHours="0")
    now = dt.datetime.now(dt.UTC)
    supersede_predecessors([old, renewed], renewed["serialNumber"], settings, now)
    snapshot = revocation.load_revocations(settings, fresh=True)
    assert snapshot.for_record(old, now).reason == "superseded"
    assert snapshot.for_record(renewed, now) is None


def test_expired_or_already_revoked_predecessors_are_left_alone(device):
    _, (old, renewed) = device
    settings = _settings(SupersededGraceHours="0")
    now = dt.datetime.now(dt.UTC)
    revocation.revoke(settings, "serialNumber", old["serialNumber"], "keyCompromise", now)
    expired = {**old, "serialNumber": "ABC123", "notAfter": (now - dt.timedelta(hours=1)).isoformat()}
    supersede_predecessors([old, expired, renewed], renewed["serialNumber"], settings, now)  # no Conflict
    snapshot = revocation.load_revocations(settings, fresh=True)
    assert snapshot.for_record(old, now).reason == "keyCompromise"
    assert snapshot.for_record(expired, now) is None
