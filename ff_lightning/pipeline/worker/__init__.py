"""The worker half of the pipeline: what runs in each DataLoader worker process."""
