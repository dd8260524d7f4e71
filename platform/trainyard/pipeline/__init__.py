"""The main job's stages beyond a single sweep: final training of the best config, with
its lineage (`final.py`)."""
