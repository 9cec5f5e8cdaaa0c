"""Run ``pyright --verifytypes quickmj`` on a plain install and check the score.

    python .ci/verifytypes.py 0.98

pyright cannot follow editable installs' path hooks, so the package is installed into a
temporary directory first (without dependencies; pyright reads those from the venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

minimum = float(sys.argv[1]) if len(sys.argv) > 1 else 0.98
target = tempfile.mkdtemp()
subprocess.run(
    [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, "."],
    check=True,
)
done = subprocess.run(
    [sys.executable, "-m", "pyright", "--verifytypes", "quickmj", "--ignoreexternal",
     "--outputjson"],
    capture_output=True, text=True, cwd=tempfile.gettempdir(),
    env=dict(os.environ, PYTHONPATH=target),
)  # fmt: skip
report = json.loads(done.stdout)["typeCompleteness"]
score = report["completenessScore"]
print(f"verifytypes: {score * 100:.1f}% ({report['exportedSymbolCounts']})")
if score < minimum:
    for symbol in report["symbols"]:
        if not symbol["isTypeKnown"]:
            print(f"  {symbol['name']}: {'; '.join(d['message'] for d in symbol['diagnostics'])[:200]}")
    raise SystemExit(f"type completeness {score * 100:.1f}% is under {minimum * 100:.0f}%")
