"""Training: optimizer, pure step functions, sharding, the pretraining run."""
