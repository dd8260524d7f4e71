"""Data as the engine sees it, one module per job, in the order a batch meets them:

    inputs.py    as_dataset: whatever the user passed -> one map-style dataset of samples
    samples.py   what a sample is (a dict of tensors: input_ids, labels, attention_mask), the
                 in-memory datasets (SampleDataset, ColumnDataset) and the dtype rules
    rows.py      RowSource: rows read by range from storage never loaded whole (Parquet row
                 groups here, Ray's object store in trainyard.execution.ingest)
    order.py     each epoch's order and each rank's batches: a function of (n, seed, epoch)
    collate.py   Collator: samples -> a padded batch
    feed.py      the DataLoader, and WindowFeed: accumulation windows moved to the device

Plain PyTorch, NumPy and pyarrow; nothing here knows where it runs.
"""
