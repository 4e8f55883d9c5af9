"""Defaults of a tuning run (a light module: the CLI reads them to build ``--help``)."""

#: Trials of each family member with parameters.
DEFAULT_TRIALS = 120
#: The policy family searched by default.
DEFAULT_FAMILY = ("laps-sd", "gittins", "lp-srpt", "lp-sjf")
DEFAULT_BAND_LIMITS = (4, 12)
DEFAULT_BAND_TRIALS = 30
#: Seconds between heartbeats of a running trial (RDB storage).
DEFAULT_HEARTBEAT = 10
#: Seconds without a heartbeat after which a trial is failed and retried (RDB storage).
DEFAULT_GRACE = 30

#: The files of a run's output folder.
CONFIG_FILE = "lapsd-config.json"
PREDICTOR_FILE = "predictor.skops"
HELDOUT_FILE = "heldout.json"
JOURNAL_FILE = "study.journal"
REPORT_FILE = "report.html"
