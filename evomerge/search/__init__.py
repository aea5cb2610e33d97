"""Search layer: strategies (ask/tell), the competition archive, the run loop, checkpoints."""
