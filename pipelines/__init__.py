"""The Ray jobs users launch (build the corpus, train, evaluate).

Starting a job applies the CPU thread policy before torch loads (passive OpenMP waiting, one
intra-op thread per usable core; see :mod:`spatialdreamer.runtime`). A program that imported
torch before importing the jobs keeps its own settings.
"""

import sys

from spatialdreamer.runtime import configure_cpu

if "torch" not in sys.modules:
    configure_cpu()
