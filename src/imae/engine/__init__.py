"""Training engine: the loop (train), objectives, optimiser and schedule (optim), checkpoints,
run directories, logs and torch.distributed set-up."""
