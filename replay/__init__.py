"""The trace format, workloads, scheduling policies, the simulator and the server config.

The policies here are the online schedulers a server drives; the simulator runs the very same
objects, and :mod:`lapsd.replay.config` builds them from an exported ``lapsd-config.json``.
This package imports nothing from :mod:`lapsd.predict`, :mod:`lapsd.tune` or
:mod:`lapsd.collect`, and never imports torch, scikit-learn or optuna.
"""
