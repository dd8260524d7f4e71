"""The main job: `trainyard run`'s stages and resume (`run.py`), the final training of a
sweep's best config with its lineage (`final.py`), and reports (`report.py`)."""
