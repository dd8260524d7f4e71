"""A durable job queue: job records in a SQL database, the jobs themselves run on Ray.

    queue = JobQueue("sqlite:///training_jobs.db")        # or any SQLAlchemy URL (PostgreSQL)
    job_id = queue.submit_job(JobConfig(model_factory=..., config=..., train_data=..., training_config=...))
    queue.wait(job_id)                                      # or poll queue.get_job_status(job_id)
    results = queue.get_job_results(job_id)                 # the engine's results dict

Each job is a Ray Job on the cluster (RAY_ADDRESS, else a `ray start` head here, else one
the queue starts), so it outlives the process that submitted it; the queue's admission actor
on that cluster starts pending jobs when there is room, by priority then submission. The job
writes its own state, a heartbeat and finally its results to the database, so any process
that opens the same URL sees them. Every job checkpoints into its own directory; a job that
was cancelled, failed or interrupted continues from its last checkpoint with `resume_job`
(one whose Ray Job was lost does so by itself, up to `max_retries` times). SQLite is one
machine's file: the jobs of a SQLite queue run on the node that holds it; use a server
database for a queue shared across nodes.
"""

from trainyard.job_queue.queue import JobConfig, JobQueue
from trainyard.job_queue.records import JOB_STATES, JobRecord

__all__ = ["JOB_STATES", "JobConfig", "JobQueue", "JobRecord"]
