"""Sweep on the Ray cluster this runs on: the entrypoint for `ray job submit`.

    ray job submit --working-dir . -- python jobs/tune.py tune_spaces/addition_small.yaml \\
        --config jobs/configs/addition.yaml --samples 16 [--gpus-per-trial 0.5]
"""

import sys

from _entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("tune", "jobs/tune.py", sys.argv[1:]))
