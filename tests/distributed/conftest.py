"""The tests that need several logical CPU devices, run in their own process by tests/test_distribute.py.

TensorFlow fixes its devices when it first starts them, so these tests run in a fresh process
(`DEADRELU_DISTRIBUTED_TESTS=1 python -m pytest tests/distributed`), which splits the CPU into
`LOGICAL_CPUS` devices here, before anything else starts TensorFlow. In the suite's own process
they are not collected (its TensorFlow has one CPU device).
"""

from __future__ import annotations

import os

LOGICAL_CPUS = 3
INNER = os.environ.get("DEADRELU_DISTRIBUTED_TESTS") == "1"

if INNER:
    from deadrelu.engine.distribute import split_cpu

    split_cpu(LOGICAL_CPUS)
else:
    collect_ignore_glob = ["test_*.py"]
