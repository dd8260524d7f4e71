"""`trainyard jobs ...`: the job queue from the shell.

    trainyard jobs submit jobs/configs/addition.yaml epochs=3 [--workers 2] [--priority 5] [--wait] [--db URL]
    trainyard jobs list [--state pending] [--owner NAME]
    trainyard jobs status ID | logs ID | results ID | cancel ID | resume ID [--wait]
    trainyard jobs max-running N|none

`--db` is a SQLAlchemy URL: `TRAINYARD_JOBS_DB` if set, else `sqlite:///training_jobs.db`
(the seed's); `postgresql://user@host/db` with the `postgres` extra. `submit` prints the
job's id and returns: the job is a Ray Job on the cluster in RAY_ADDRESS (else the `ray
start` head on this machine, else one started here), started by the queue's admission actor
there when the cluster has room, by priority then submission. It shows in `ray job list`
(submission id `trainyard-<id>-<attempt>`); `logs` prints what its Ray Job logged (or its
`job.log`, which keeps every attempt's lines), `--wait` follows it to its end.
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

    submit = verb("submit", "submit an experiment config as a job (prints its id and returns; --wait follows it)", job_id=False)
    submit.add_argument("config", help="experiment YAML, e.g. jobs/configs/addition.yaml")
    submit.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3")
    submit.add_argument("--workers", type=int, default=1, help="> 1: a Ray Train run with DDP")
    submit.add_argument("--gpu", action="store_true", help="a GPU per worker")
    submit.add_argument("--name", default=None, help="the job's name (default: the config's)")
    submit.add_argument("--priority", type=int, default=0, help="higher starts first (default 0); equal ones in submission order")
    submit.add_argument("--retries", type=int, default=2, metavar="N",
                        help="times a job whose Ray Job was lost (a node, the head) resumes by itself (default 2)")
    submit.add_argument("--owner", default=None, help="who submits it (default: the OS user)")
    submit.add_argument("--wait", action="store_true", help="follow the job to its end (Ctrl-C stops following, not the job)")
    listing = verb("list", "the jobs, oldest first (a pending job with its place in the queue and why it waits)", job_id=False)
    listing.add_argument("--state", default=None, help="only jobs in this state (pending, running, completed, ...)")
    listing.add_argument("--owner", default=None, help="only the jobs this user submitted")
    verb("status", "one job's record")
    verb("logs", "what the job's processes logged")
    verb("results", "a completed job's results, as JSON")
    verb("cancel", "stop a pending or running job (a running one saves a checkpoint first)")
    resume = verb("resume", "queue a cancelled, failed or interrupted job again, to continue from its last checkpoint")
    resume.add_argument("--wait", action="store_true", help="follow the job to its end")
    limit = verb("max-running", "how many of the queue's jobs may run at once", job_id=False)
    limit.add_argument("limit", help="a number (0 holds every pending job), or none for as many as the cluster fits")


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
    if args.retries < 0:
        raise ValueError(f"--retries {args.retries}: give 0 or more")
    with say_if_slow(f"preparing the job: reading {args.config}'s data", logger="trainyard.cli"):
        exp = build(load_spec(args.config, args.overrides))
    job = JobConfig(
        model_factory=exp.model_factory, config=exp.model_config, train_data=exp.train_data, val_data=exp.val_data,
        training_config=exp.training_config, task_spec=exp.task_spec, num_workers=args.workers, use_gpu=args.gpu,
        name=args.name or Path(args.config).stem, priority=args.priority, max_retries=args.retries, owner=args.owner,
    )
    with say_if_slow(f"submitting the job to {queue.url}", logger="trainyard.cli"):
        job_id = queue.submit_job(job)
    if not args.wait:
        print(f"job {job_id} submitted to {queue.url}; it runs on without this shell (`trainyard jobs status {job_id}`, "
              f"`trainyard jobs logs {job_id}`)", flush=True)
        return 0
    print(f"job {job_id} submitted to {queue.url}; following it (Ctrl-C stops following; `trainyard jobs cancel {job_id}` stops the job)", flush=True)
    return _follow(queue, job_id)


def _resume(queue, args) -> int:
    queue.resume_job(args.id)
    if not args.wait:
        print(f"job {args.id} queued again; it continues from its last checkpoint (`trainyard jobs status {args.id}`)", flush=True)
        return 0
    print(f"job {args.id} queued again; following it", flush=True)
    return _follow(queue, args.id)


def _max_running(queue, args) -> int:
    value = args.limit.strip().lower()
    if value not in ("none", "") and not value.isdigit():
        raise ValueError(f"max-running {args.limit!r}: give a number (0 holds every pending job) or none")
    queue.set_max_running(None if value in ("none", "") else int(value))
    print(f"the queue at {queue.url} runs {'as many jobs as the cluster fits' if value in ('none', '') else f'at most {value} job(s)'} at once")
    return 0


def _follow(queue, job_id: str, poll: float = 0.5) -> int:
    """Print what the job's Ray Job logs as it comes (each attempt's in turn), until the job
    ends; exit code 0 when it completed. Ctrl-C stops following, not the job."""
    printed: dict[str, int] = {}
    try:
        while True:
            record = queue.get_job(job_id)
            done = record.state in ("completed", "failed", "cancelled", "interrupted") and not queue._still_stopping(job_id)
            text = queue.ray_job_logs(job_id) if record.ray_job else None
            if text is not None:
                sys.stdout.write(text[printed.get(record.ray_job, 0):])
                sys.stdout.flush()
                printed[record.ray_job] = len(text)
            if done:
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it runs on (`trainyard jobs cancel {job_id}` stops it)", flush=True)
        return 130
    print(f"job {job_id}: {record.state}" + (f" ({_last_line(record.error)})" if record.error else ""), flush=True)
    return 0 if record.state == "completed" else 1


def _list(queue, args) -> int:
    records = queue.list_jobs(args.state, owner=args.owner)
    if not records:
        print(f"no jobs{' ' + args.state if args.state else ''}{' of ' + args.owner if args.owner else ''} in {queue.url}")
        return 0
    rows = [("ID", "NAME", "OWNER", "STATE", "PRIORITY", "QUEUED", "SUBMITTED", "ATTEMPTS", "WHY")]
    rows += [(r.id, r.name or "", r.owner or "", r.state, str(r.priority), f"#{r.position}" if r.position else "", _when(r.submitted_at),
              str(r.attempts), _why(r)[:70]) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _why(record) -> str:
    """A pending job's reason to wait; a finished one's error."""
    if record.state == "pending":
        return record.reason or ("starting" if record.ray_job else "waiting for the admission actor")
    return _last_line(record.error)


def _status(queue, args) -> int:
    record = queue.get_job(args.id)
    fields = {
        "id": record.id, "name": record.name, "owner": record.owner, "state": record.state, "priority": record.priority,
        "queued": f"#{record.position}" if record.position else None, "waiting": record.reason if record.state == "pending" else None,
        "ray_job": record.ray_job, "submitted": _when(record.submitted_at),
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
    """The Ray Job's log of the job's current attempt (what `ray job logs` prints); where the
    cluster no longer knows it, the job's own log file."""
    from trainyard.job_queue.runner import log_path

    record = queue.get_job(args.id)
    text = queue.ray_job_logs(args.id)
    if text:
        sys.stdout.write(text)
        return 0
    path = log_path(record.checkpoint_dir)
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


_VERBS = {"submit": _submit, "list": _list, "status": _status, "logs": _logs, "results": _results, "cancel": _cancel, "resume": _resume,
          "max-running": _max_running}


def _when(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S") if timestamp else ""


def _last_line(text: str | None) -> str:
    return text.strip().splitlines()[-1] if text and text.strip() else ""
