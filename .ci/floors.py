"""Print the runtime dependencies of pyproject.toml pinned to their lower bounds.

    pip install $(python .ci/floors.py)          # aiohttp==3.10 attrs==23.1 ...
    pip install $(python .ci/floors.py --test)   # the test extra, as declared

CI installs these to run the whole suite on the oldest versions quickmj claims to support.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
if "--test" in sys.argv:
    print(" ".join(f"'{d}'" if " " in d else d for d in project["optional-dependencies"]["test"]))
else:
    pins = []
    for dep in project["dependencies"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
        if not m:
            raise SystemExit(f"no lower bound to pin in {dep!r}")
        pins.append(f"{m.group(1)}=={m.group(2)}")
    print(" ".join(pins))
