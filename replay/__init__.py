"""lapsd's replay package: the trace format, workloads, scheduling policies and the simulator.

The policies here are the online schedulers a server drives; the simulator runs the very same
objects. Importing this package never imports torch.
"""

__version__ = "0.1.0"
