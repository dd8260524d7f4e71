"""Is this Python able to run trainyard? Checked by the `ray job submit` entrypoints, where a
job runs with whatever Python the cluster was started with."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

# import name -> what pip installs it as (the project's own requirements)
REQUIRED = {
    "torch": "torch==2.13.0", "ray": "ray[default,train,tune]~=2.60.0", "optuna": "optuna>=4.0",
    "sqlalchemy": "sqlalchemy>=2.0", "pyarrow": "pyarrow>=14", "pandas": "pandas>=2.0",
    "numpy": "numpy>=1.24", "yaml": "PyYAML>=6.0", "tqdm": "tqdm>=4.66", "matplotlib": "matplotlib>=3.7",
}


def missing() -> list[str]:
    """The pip requirements of the modules this Python cannot import (nothing is imported)."""
    return [pip for module, pip in REQUIRED.items() if importlib.util.find_spec(module) is None]


def require(entrypoint: str) -> None:
    """Exit with one message naming what is missing and the three ways to provide it."""
    lacking = missing()
    if not lacking:
        return
    names = ", ".join(re.split(r"[\[=<>~]", p)[0] for p in lacking)
    pip = json.dumps({"pip": [p for p in lacking if not p.startswith("ray")]})  # Ray's own venv has Ray
    sys.stderr.write(
        f"{entrypoint}: this Python ({sys.executable}) lacks {names}, which trainyard needs. A `ray job "
        "submit` job runs with the Python the cluster was started with. Either:\n"
        "  - start the head from the project's environment: source .venv/bin/activate && ray start --head\n"
        f"  - or have Ray install them for the job: ray job submit --runtime-env-json '{pip}' ...\n"
        "  - or install them on every node (cluster.yaml's setup_commands)\n"
    )
    raise SystemExit(2)
