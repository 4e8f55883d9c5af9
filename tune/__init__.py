"""Optuna tuning of LAPS-SD over trace replays, and the exported server config."""
