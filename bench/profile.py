"""`python -m bench.profile issuance|reports`: pyinstrument over the in-process hot loop.

issuance: the registered `certificate` function, request object in, response out, on a dev CA
(`--ca`), with the audit log on disk or in a null store (`--store`). reports: raw S/MIME message
in, `verify_signed_report` out, on the report-signing guide's PKI.

pyinstrument hooks every Python call, so pure-Python code (json's indent encoder, asn1crypto)
looks costlier under it than it is: confirm a suspect with `python -m bench` before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.issuance import NullStore, Rotation, app_environment, certificate_function, request_for
from bench.material import make_ca, make_csrs


def _issuance_loop(work: Path, ca_type: str, store: str, count: int, stack: contextlib.ExitStack) -> Callable[[], None]:
    import xboot.service.enrollment.enroll

    ca = make_ca(work / "ca", ca_type)
    rotation = Rotation(make_csrs(work / "csr", "ec-p256", 16))
    function = certificate_function()
    if store == "null":
        null_store = NullStore()
        real_open = xboot.service.enrollment.enroll.open_data_store
        xboot.service.enrollment.enroll.open_data_store = lambda settings: null_store
        stack.callback(setattr, xboot.service.enrollment.enroll, "open_data_store", real_open)
    stack.enter_context(app_environment({**ca.settings(), "DataDirectory": str(work / "data")}))
    function(request_for(rotation.next()))  # signer load and first-call costs stay out of the profile
    requests = [request_for(rotation.next()) for _ in range(count)]

    def loop() -> None:
        for request in requests:
            function(request)

    return loop


def _reports_loop(work: Path, count: int) -> Callable[[], None]:
    from bench.reports import _make_reports
    from xboot.service.reports.smime import parse_signed_message
    from xboot.service.reports.trust import TrustAnchors
    from xboot.service.reports.verify import verify_signed_report

    pki, messages = _make_reports(work, 8)
    anchors = TrustAnchors(frozenset({pki.fingerprint("ca_root")}))

    def loop() -> None:
        for index in range(count):
            verify_signed_report(parse_signed_message(messages[index % 8]), anchors, dt.datetime.now(dt.UTC))

    return loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("issuance", "reports"))
    parser.add_argument("--ca", choices=("ec-p256", "rsa-2048"), default="ec-p256", help="issuing CA key (issuance)")
    parser.add_argument("--store", choices=("disk", "null"), default="null", help="audit log target (issuance)")
    parser.add_argument("-n", type=int, default=2000, help="iterations (default 2000)")
    parser.add_argument("--html", type=Path, help="also write pyinstrument's HTML report here")
    args = parser.parse_args(argv)
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: .venv/bin/pip install pyinstrument", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="xboot-profile-") as scratch, contextlib.ExitStack() as stack:
        work = Path(scratch)
        if args.target == "issuance":
            loop = _issuance_loop(work, args.ca, args.store, args.n, stack)
        else:
            loop = _reports_loop(work, args.n)
        profiler = Profiler(interval=0.0002)
        profiler.start()
        loop()
        profiler.stop()
    print(profiler.output_text(unicode=True, color=sys.stdout.isatty()))
    if args.html:
        args.html.write_text(profiler.output_html())
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
