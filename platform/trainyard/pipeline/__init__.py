"""The main job: `trainyard run`'s stages and resume (`run.py`), and the final training of a
sweep's best config with its lineage (`final.py`). Its report is `trainyard.report`'s."""
