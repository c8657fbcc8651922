"""The README's tour, run as written: its shell blocks, in order, in a fresh folder, against `xboot serve`.

Nothing in the blocks is edited but the port (the server takes a free one; the tour says 7071). The
server is the README's first command's: no Location (the development CA), no keys, data in `.xboot-data`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.live_server import ROOT, clean_environment, wait_for_serving

TOUR = re.compile(r"^## A tour with openssl and curl\n(.*?)^## ", re.DOTALL | re.MULTILINE)
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def tour_blocks() -> list[str]:
    section = TOUR.search((ROOT / "README.md").read_text())
    assert section is not None, "the README has no tour section"
    return BLOCK.findall(section.group(1))


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks()
    assert len(blocks) == 3
    log_path = tmp_path / "serve.log"
    env = clean_environment({"DataDirectory": str(tmp_path / ".xboot-data")})
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "xboot", "serve", "--port", "0", "--app-dir", str(ROOT)],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        port = wait_for_serving(server, log_path, timeout=60)
        outputs = []
        for block in blocks:
            script = "set -euo pipefail\n" + block.replace("localhost:7071", f"localhost:{port}")
            run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                 env=clean_environment({}))  # fmt: skip
            assert run.returncode == 0, f"tour block failed:\n{block}\nstdout: {run.stdout}\nstderr: {run.stderr}"
            outputs.append(run.stdout + run.stderr)
    finally:
        server.terminate()
        server.wait(10)
    enroll, report, trust_and_revoke = outputs
    assert "device.crt: OK" in enroll
    assert '"kind": "system"' in report and '"gatewayId": "my-device-01"' in report
    assert '"issuingCaTrusted": true' in trust_and_revoke and '"error": "revoked"' in trust_and_revoke
    assert "Traceback" not in log_path.read_text()
