"""The training loop every recipe shares: one jitted step, the host loop, stages,
checkpoints, optimisers, run folders, logs and reports."""
