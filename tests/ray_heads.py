"""Real `ray start --head` clusters for tests: each in its own temp dir and on free ports (so
its address file is its own and the test session's local Ray is never joined by accident),
started with `--block` and stopped by signalling its process group (`ray stop` would stop
every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from trainyard.execution.ray_env import free_port


@dataclass
class Head:
    process: subprocess.Popen
    address: str  # the job API's http:// address (what RAY_ADDRESS takes for `ray job ...`)
    gcs: str  # host:port, what ray.init joins
    temp_dir: Path | None

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Stop the head and everything it started (its process group; a job's driver is in
        a session of its own, and Ray's fate-sharing ends it with its supervisor)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=3)  # `ray start --block` takes 15 s and more to stop its processes itself
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        self.kill()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        else:  # `ray stop` would delete the address file it wrote; a stale one sends clients to a dead address
            current = Path(tempfile.gettempdir(), "ray", "ray_current_cluster")
            if current.exists() and current.read_text().strip().endswith(":" + self.gcs.rpartition(":")[2]):
                current.unlink()


def start_head(env: dict[str, str], num_cpus: int, python: str = sys.executable, timeout: float = 90, own_temp_dir: bool = True) -> Head:
    """A head with the job API up. `own_temp_dir=False`: in Ray's default temp dir, where
    its address file makes it "the `ray start` head on this machine"."""
    # short: Ray's socket paths must fit 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="ty-ray-", dir="/tmp")) if own_temp_dir else None
    dashboard, gcs_port = free_port(), free_port()
    ports = [f"--{name}={free_port()}" for name in (
        "node-manager-port", "object-manager-port", "ray-client-server-port", "metrics-export-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
    )]
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen(
        [python, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={gcs_port}", *([f"--temp-dir={temp_dir}"] if temp_dir else []),
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--num-cpus={num_cpus}",
         "--include-dashboard=true", "--disable-usage-stats", *ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    head = Head(process, f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs_port}", temp_dir)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            head.stop()
            raise RuntimeError(f"the Ray head exited at once ({process.returncode})")
        try:
            with urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=2):
                pass
            return head
        except urllib.error.HTTPError as e:  # it answers (401 with token auth): it is up
            if e.code != 404:
                return head
        except OSError:  # not listening yet
            pass
        time.sleep(0.5)
    head.stop()
    raise RuntimeError(f"the Ray head did not start within {timeout:.0f} s")


def head_env(**extra: str) -> dict[str, str]:
    """This environment, with the repo on the path (jobs unpickle objects defined in tests/)
    and this interpreter's directory first (a job's `python` is this environment's)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env
