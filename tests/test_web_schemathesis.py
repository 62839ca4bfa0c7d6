"""schemathesis against the running edge's OpenAPI document: no input makes it fail.

Run as an operator (every operation reachable), re-sync included: it takes at most 1000
MACs and waits at most a few seconds for the phones, so no generated body can make it
error or hang.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from web_fixtures import portal_edge


def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    with portal_edge(tmp_path) as pe:
        out = subprocess.run(
            [
                str(st), "run", f"{pe.base}/api/v1/openapi.json",
                "--checks", "not_a_server_error",
                "--header", f"Authorization: Bearer {pe.tokens['op']}",
                "--max-examples", "30",
                "--phases", "examples,coverage,fuzzing",
                "--generation-database", "none",
                "--workers", "1",
                "--seed", "4711",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            cwd=tmp_path,
        )  # fmt: skip
        report = out.stdout[-6000:] + out.stderr[-2000:]
        assert out.returncode == 0, report + pe.edge.log()
        generated = re.search(r"(\d+) generated, (\d+) passed", out.stdout)
        assert generated and generated.group(1) == generated.group(2), report
        assert int(generated.group(1)) > 500, report
        tested = re.search(r"Tested: (\d+)", out.stdout)
        assert tested and int(tested.group(1)) >= 20, report
