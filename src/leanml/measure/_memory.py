"""Peak inference memory, measured in a child process so that nothing else pollutes it."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..data import Inputs

_CHILD = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort
path, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
feed = dict(np.load(data))
def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None
try:  # reset the peak-RSS mark (Linux), so the imports above do not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_kib("VmRSS")
except OSError:
    before = None
if before is None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
opts = ort.SessionOptions()
opts.intra_op_num_threads = threads
opts.inter_op_num_threads = 1
opts.log_severity_level = 3
sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
if len(names) == 1 and names[0] not in feed:
    feed = {names[0]: next(iter(feed.values()))}
for _ in range(3):
    sess.run(None, {n: feed[n] for n in names})
after = rss_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": after - before}))
"""


def peak_memory_bytes(
    path: Path, batch: Inputs, *, threads: int = 1, timeout: float = 120.0
) -> int | None:
    """Growth of the peak resident set from loading ``path`` in ONNX Runtime and running ``batch``.

    Measured in a fresh process with ``ru_maxrss`` before and after: session creation (weights,
    arena) plus three runs. None when the child fails (the caller reports it as unknown).
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "batch.npz"
        arrays = batch if isinstance(batch, dict) else {"x": batch}
        np.savez(data, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), str(data), str(threads)],
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None
    if proc.returncode != 0:
        return None
    try:
        return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_kib"]) * 1024
    except (ValueError, KeyError, IndexError):
        return None
