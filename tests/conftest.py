"""Test-wide settings and fixtures (one Ray instance per session); tiny models live in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# As `import trainyard` does for a user, before anything imports Ray (a test module that
# imports ray first would leave it unset): send Ray's token where `ray start` wrote one, so
# the `ray` CLI the tests run talks to the heads they start.
from trainyard.execution.ray_env import token_auth_if_available  # noqa: E402

token_auth_if_available()

from tests.helpers import lm_samples  # noqa: E402


@pytest.fixture
def samples():
    return lm_samples()


@pytest.fixture
def ckdir(tmp_path):
    return str(tmp_path / "run")


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray for the session, started after the S3 endpoint: its workers inherit
    this process's environment, AWS's variables for that endpoint included."""
    ray = pytest.importorskip("ray")
    # Ray's workers and Train controller unpickle objects defined in tests/: put the repo
    # on their path (they inherit this process's environment).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    from trainyard.execution.ray_env import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(num_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def process_group_of_one(tmp_path_factory):
    """A torch.distributed (gloo) process group of this process alone, as FSDP and DCP need;
    a file rendezvous, so no port can clash."""
    import torch.distributed as dist

    store = tmp_path_factory.mktemp("process_group") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server for the session, in a temp directory, on a unix socket only
    (no TCP port), run as `nobody` when the tests run as root (initdb refuses root)."""
    import shutil
    import subprocess

    pytest.importorskip("psycopg", reason="the postgres extra: pip install -e '.[postgres]'")
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not on PATH")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="trainyard-postgres-"))  # not under pytest's owner-only temp root: nobody must reach it
    as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    if as_user:
        os.chmod(base, 0o755)
        shutil.chown(base, "nobody")
    data = base / "data"

    def run(*argv):
        proc = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    options = f"-k {base} -c listen_addresses='' -p 5432 -c fsync=off -c max_connections=200"
    run(pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "server.log"), "-w", "start")
    yield f"postgresql://postgres@/postgres?host={base}"
    run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def jobs_db(request, tmp_path):
    """A job queue database URL: a fresh SQLite file, or a fresh database on the session's
    PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    import psycopg

    server = request.getfixturevalue("postgres_url")
    name = f"jobs_{os.getpid()}_{abs(hash(request.node.nodeid)) % 10**8}"
    host = server.split("host=", 1)[1]
    with psycopg.connect(host=host, user="postgres", dbname="postgres", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={host}"


class Bucket:
    """One bucket on the session's S3 endpoint: `uri(...)` for locations in it, `keys(...)`
    for what is there."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *parts])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/"))  # not folder markers


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint for the session: moto's server on loopback and a free port,
    reached only through AWS's own variables (set for this process and what it starts)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server]: pip install -e '.[dev]'")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3

    yield boto3.client("s3")
    server.stop()
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture
def bucket(s3_endpoint, request):
    """A new, empty bucket on the session's S3 endpoint, for this test alone."""
    name = f"test-{abs(hash(request.node.nodeid)) % 10**10}"
    s3_endpoint.create_bucket(Bucket=name)
    return Bucket(s3_endpoint, name)


@pytest.fixture(scope="session")
def ray_head():
    """A real `ray start` head for the session (2 CPUs), in its own temp dir and on its own
    ports: the job queue's jobs are Ray Jobs on it."""
    from tests.ray_heads import head_env, start_head

    head = start_head(head_env(), num_cpus=2)
    yield head
    head.stop()


@pytest.fixture
def queue_cluster(ray_head, monkeypatch):
    """RAY_ADDRESS names the session's head, for this test and the processes it starts."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    return ray_head
