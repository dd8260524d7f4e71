"""The main job on the Ray cluster this runs on: the entrypoint for `ray job submit`.

    ray job submit --working-dir . -- python jobs/pipeline.py jobs/configs/addition.yaml \\
        --space tune_spaces/addition_small.yaml --samples 16 --workers 4 [--gpu]

Sweep, final training on Ray Train, verified export and report, as `trainyard run`;
submitting the same command again resumes it where it stopped.
"""

import sys

from _entry import run_command

if __name__ == "__main__":
    sys.exit(run_command("run", "jobs/pipeline.py", sys.argv[1:]))
