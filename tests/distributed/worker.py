"""One worker of the 2-worker cluster test (tests/test_distribute.py): scan and revive, print the evidence.

Run as `python tests/distributed/worker.py MODEL DATA BATCH_SIZE` with `TF_CONFIG` set
(tests/cluster.py): every worker reads only its shard of DATA; it prints one JSON line with its
index, whether it is the chief, the combined report and a digest of the revived weights.
"""

from __future__ import annotations

import hashlib
import json
import sys

from deadrelu.engine.distribute import is_chief, strategy_from_flags, worker_index

strategy = strategy_from_flags("multi-worker")  # first: before TensorFlow does anything else

import deadrelu  # noqa: E402

model_path, data_path, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with strategy.scope():
    model = deadrelu.load_model(model_path)
report = deadrelu.scan(model, data_path, batch_size=batch_size)
# Checked on the report's data file (every worker reads its shard for the second draws: the same
# batch size as the scan gives each worker batches); seed=None: derived alike on every worker.
result = deadrelu.revive_model(model, report, seed=None, batch_size=batch_size)
digest = hashlib.sha256(b"".join(w.tobytes() for w in result.model.get_weights())).hexdigest()
line = {
    "worker": worker_index(strategy),
    "chief": is_chief(strategy),
    "report": report.to_dict(),
    "revived": result.revived,
    "check": result.check.to_dict(),
    "digest": digest,
}
print(json.dumps(line))
