"""lapsd: schedule speculative-decoding LLM requests well.

The packages follow the data flow: :mod:`lapsd.collect` (GPU traces and the live server loop)
and :mod:`lapsd.predict` (output-length predictor) feed :mod:`lapsd.replay` (trace format,
schedulers, simulator, server config), which :mod:`lapsd.tune` searches. This module and its
small helpers (:mod:`lapsd.errors`, :mod:`lapsd.io`, :mod:`lapsd.console`) import none of them;
only the root command, :mod:`lapsd.cli`, sits above all four.
"""

__version__ = "0.2.0"
