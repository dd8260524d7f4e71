"""`python -m trainyard.compat script.py [args]`: run an old script with the legacy import
paths enabled, without changing it (`-m module` runs a module instead of a script)."""

from __future__ import annotations

import os
import runpy
import sys

from trainyard.compat.imports import enable_legacy_imports


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m trainyard.compat script.py [args ...] | -m module [args ...]", file=sys.stderr)
        return 2
    enable_legacy_imports()
    if argv[0] == "-m":
        if len(argv) < 2:
            print("-m needs a module name", file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python script.py` does
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
