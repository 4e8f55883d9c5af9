"""Defaults of a tuning run (a light module: the CLI reads them to build ``--help``)."""

DEFAULT_TRIALS = 150
DEFAULT_BAND_LIMITS = (4, 12)
DEFAULT_BAND_TRIALS = 30
