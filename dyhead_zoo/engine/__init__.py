"""Training runs: the trainer, optimizer and schedule, checkpoints, distributed set-up."""
