"""A durable job queue: job records in a SQL database, the jobs themselves run on Ray.

    queue = JobQueue("sqlite:///training_jobs.db")        # or any SQLAlchemy URL (PostgreSQL)
    job_id = queue.submit_job(JobConfig(model_factory=..., config=..., train_data=..., training_config=...))
    queue.wait(job_id)                                      # or poll queue.get_job_status(job_id)
    results = queue.get_job_results(job_id)                 # the engine's results dict

Each job runs as a Ray task (a Ray Train run inside it when `num_workers > 1`) that writes
its own state, a heartbeat and finally its results to the database, so any process that
opens the same URL sees them. Every job checkpoints into its own directory; a job that was
cancelled, failed or interrupted (its submitting process died) continues from its last
checkpoint with `resume_job`. SQLite is one machine's file: jobs of a SQLite queue are
pinned to the submitting node; use a server database for a queue shared across nodes.
"""

from trainyard.job_queue.queue import JobConfig, JobQueue
from trainyard.job_queue.records import JOB_STATES, JobRecord

__all__ = ["JOB_STATES", "JobConfig", "JobQueue", "JobRecord"]
