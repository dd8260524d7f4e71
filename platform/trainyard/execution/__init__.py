"""Running the engine loop on Ray Train (and, later, the job queue).

`Trainer(..., scaling=N).train(...)` lands in `ray_train.fit`; nothing here is imported
until then, so the engine and `import trainyard` stay free of Ray.
"""
