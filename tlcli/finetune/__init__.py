"""Fine-tuning strategies: which parameters train, and at which LR in which epoch."""
