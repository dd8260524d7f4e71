"""The Ray layer: every contact with Ray lives in this package.

    ray_env.py    connecting (an existing cluster, else a quiet local instance), verbosity
    contexts.py   the run contexts of Ray Train workers and Tune trials; create_run_context
    parallel.py   DDP or FSDP2 on any torch.distributed process group (no Ray), and its run
                  context, which Ray Train's extends
    launch.py     fit(): the one way a Ray Train run starts (Trainer(scaling=), sweeps with
                  workers_per_trial > 1, final training, job-queue jobs)
    configs.py    Ray Train's ScalingConfig / RunConfig / CheckpointConfig, built in one place
    remote.py     what crosses into Ray's processes: absolute paths, pickling, run names
    ray_jobs.py   Ray's job system: its HTTP API from outside a cluster (a head started when
                  there is none), detached actors and cluster facts from inside one

It depends on the engine only; `hpo`, the job queue and everything above depend on it.
Nothing here imports Ray until it is used, so the engine and `import trainyard` stay free
of it.
"""

from trainyard.execution.ray_env import token_auth_if_available

token_auth_if_available()
