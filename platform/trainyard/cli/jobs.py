"""`trainyard jobs ...`: the job queue from the shell.

    trainyard jobs submit jobs/configs/addition.yaml epochs=3 [--workers 2] [--db URL]
    trainyard jobs list [--state running]
    trainyard jobs status ID | logs ID | results ID | cancel ID | resume ID

`--db` is a SQLAlchemy URL: `TRAINYARD_JOBS_DB` if set, else `sqlite:///training_jobs.db`
(the seed's); `postgresql://user@host/db` with the `postgres` extra. A job runs on Ray as
a task of the process that submitted it, so `submit` (and `resume`) stay with the job until
it ends, its lines reaching the terminal as they are logged; if that process dies the job
reads `interrupted`, and `trainyard jobs resume ID` continues it from its last checkpoint.
`logs` prints the job's log file (`job.log` in its directory) from any process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from trainyard._logging import say_if_slow
from trainyard.storage import is_local

DEFAULT_DB = "sqlite:///training_jobs.db"


def add_parser(sub) -> None:
    jobs = sub.add_parser("jobs", help="the job queue: submit, list, status, logs, results, cancel, resume")
    verbs = jobs.add_subparsers(dest="verb", required=True)

    def verb(name: str, help: str, job_id: bool = True):
        parser = verbs.add_parser(name, help=help)
        if job_id:
            parser.add_argument("id", help="the job's id (trainyard jobs list shows them)")
        parser.add_argument("--db", default=None, help=f"database URL (default: $TRAINYARD_JOBS_DB, else {DEFAULT_DB})")
        parser.add_argument("--storage", default=None, metavar="PATH",
                            help="where the jobs' checkpoints and logs go: a local or shared path (default: $TRAINYARD_STORAGE/jobs, "
                                 "else beside the database file)")
        return parser

    submit = verb("submit", "submit an experiment config as a job, and follow it to its end", job_id=False)
    submit.add_argument("config", help="experiment YAML, e.g. jobs/configs/addition.yaml")
    submit.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3")
    submit.add_argument("--workers", type=int, default=1, help="> 1: a Ray Train run with DDP")
    submit.add_argument("--gpu", action="store_true", help="a GPU per worker")
    submit.add_argument("--name", default=None, help="the job's name (default: the config's)")
    listing = verb("list", "the jobs, oldest first", job_id=False)
    listing.add_argument("--state", default=None, help="only jobs in this state (pending, running, completed, ...)")
    verb("status", "one job's record")
    verb("logs", "what the job's processes logged")
    verb("results", "a completed job's results, as JSON")
    verb("cancel", "stop a pending or running job (a running one saves a checkpoint first)")
    verb("resume", "run a cancelled, failed or interrupted job again from its last checkpoint, and follow it")


def run(args: argparse.Namespace) -> int:
    from trainyard.job_queue import JobQueue

    queue = JobQueue(args.db or os.environ.get("TRAINYARD_JOBS_DB") or DEFAULT_DB, storage_path=args.storage)
    try:
        return _VERBS[args.verb](queue, args)
    except KeyError as e:  # an unknown id: the queue's message names the database and the fix
        raise ValueError(str(e.args[0]).replace("queue.list_jobs() lists", "`trainyard jobs list` lists")) from None
    except RuntimeError as e:  # a job in the wrong state for the verb ("job X is failed: ...")
        if str(e).startswith("job "):
            raise ValueError(str(e)) from None
        raise


def _submit(queue, args) -> int:
    from trainyard.experiment import build, load_spec
    from trainyard.job_queue import JobConfig

    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: a job needs at least 1 worker")
    with say_if_slow(f"preparing the job: reading {args.config}'s data", logger="trainyard.cli"):
        exp = build(load_spec(args.config, args.overrides))
    job = JobConfig(
        model_factory=exp.model_factory, config=exp.model_config, train_data=exp.train_data, val_data=exp.val_data,
        training_config=exp.training_config, task_spec=exp.task_spec, num_workers=args.workers, use_gpu=args.gpu,
        name=args.name or Path(args.config).stem,
    )
    with say_if_slow(f"submitting the job to {queue.url}", logger="trainyard.cli"):
        job_id = queue.submit_job(job)
    print(f"job {job_id} submitted to {queue.url}; following it (Ctrl-C stops it; `trainyard jobs resume {job_id}` continues)", flush=True)
    return _follow(queue, job_id)


def _resume(queue, args) -> int:
    queue.resume_job(args.id)
    print(f"job {args.id} resumed; following it", flush=True)
    return _follow(queue, args.id)


def _follow(queue, job_id: str) -> int:
    """Wait for the job to end (its lines reach this terminal through Ray, as they are
    logged), then for its last logged line to arrive; exit code 0 when it completed."""
    from trainyard.execution.ray_env import forwarded_lines

    with forwarded_lines() as seen:
        state = queue.wait(job_id)
        record = queue.get_job(job_id)
        _catch_up(seen, record.checkpoint_dir)
    print(f"job {job_id}: {state}" + (f" ({_last_line(record.error)})" if record.error else ""), flush=True)
    return 0 if state == "completed" else 1


def _catch_up(seen: list[str], checkpoint_dir: str, timeout: float = 5.0) -> None:
    """Ray forwards a job's lines a moment after they are logged, so the job can end before
    its last epoch line has reached this terminal: wait (a few seconds at most) until the
    last line of its log (job.log, stamped) has arrived, so the state is said last."""
    from trainyard.job_queue.runner import log_path

    path = log_path(checkpoint_dir) if is_local(checkpoint_dir) else None
    lines = path.read_text(errors="replace").splitlines() if path is not None and path.is_file() else []
    if not lines:
        return
    last = lines[-1].split(" ", 2)[-1]  # without its date and time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(last in line for line in seen[-50:]):
        time.sleep(0.05)


def _list(queue, args) -> int:
    records = queue.list_jobs(args.state)
    if not records:
        print(f"no jobs{' ' + args.state if args.state else ''} in {queue.url}")
        return 0
    rows = [("ID", "NAME", "STATE", "SUBMITTED", "ATTEMPTS", "ERROR")]
    rows += [(r.id, r.name or "", r.state, _when(r.submitted_at), str(r.attempts), _last_line(r.error)[:60]) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _status(queue, args) -> int:
    record = queue.get_job(args.id)
    fields = {
        "id": record.id, "name": record.name, "state": record.state, "submitted": _when(record.submitted_at),
        "started": _when(record.started_at), "finished": _when(record.finished_at), "attempts": record.attempts,
        "checkpoint_dir": record.checkpoint_dir, "checkpoint": record.checkpoint_path or _resumes_from(record), "error": _last_line(record.error),
    }
    for key, value in fields.items():
        if value not in (None, ""):
            print(f"{key:<15}{value}")
    return 0


def _resumes_from(record) -> str | None:
    """A job not completed: the checkpoint `resume` would continue from (the newest that
    verifies in its folder), where this machine can see the folder."""
    if record.state == "completed" or not is_local(record.checkpoint_dir):
        return None
    from trainyard.engine.run_folder import latest_valid

    folder = Path(record.checkpoint_dir)
    newest = latest_valid(folder) if folder.is_dir() else None
    return f"{newest} (resume continues from it)" if newest is not None else None


def _logs(queue, args) -> int:
    from trainyard.job_queue.runner import log_path

    path = log_path(queue.get_job(args.id).checkpoint_dir)
    if not path.is_file():
        print(f"job {args.id} has logged nothing yet ({path})")
        return 0
    sys.stdout.write(path.read_text())
    return 0


def _results(queue, args) -> int:
    from trainyard.engine.results import results_as_json

    results = results_as_json(queue.get_job_results(args.id))
    scalars_first = sorted(results, key=lambda k: isinstance(results[k], (list, dict)))
    print(json.dumps({k: results[k] for k in scalars_first}, indent=1, default=str))
    return 0


def _cancel(queue, args) -> int:
    if queue.cancel_job(args.id):
        print(f"job {args.id} cancelled (a running job saves a checkpoint first; `trainyard jobs resume {args.id}` continues it)")
        return 0
    print(f"job {args.id} is {queue.get_job_status(args.id)}: nothing to cancel")
    return 1


_VERBS = {"submit": _submit, "list": _list, "status": _status, "logs": _logs, "results": _results, "cancel": _cancel, "resume": _resume}


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""


def _last_line(text: str | None) -> str:
    return text.strip().splitlines()[-1] if text and text.strip() else ""
