"""Canary rollouts: the driver around the pure judges and state machine, its API and CLI."""
