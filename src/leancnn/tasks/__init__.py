"""What the command line runs: thin compositions of data, models, losses and the training engine."""
