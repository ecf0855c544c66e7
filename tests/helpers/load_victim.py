"""Start a CpuLoad, print its processes as one JSON line, then sleep until a signal ends us.

    python tests/helpers/load_victim.py KIND WORKERS PERCENT [main|thread]
    python tests/helpers/load_victim.py quota   (run under a 0.5-core CpuQuota; prints its cgroup directory)

``thread`` starts the load from a second thread. There are then no signal handlers and no PR_SET_PDEATHSIG, so
only the workers' ``getppid`` watchdog (and the timeout backstop) can end them when this process is killed.

Used by tests/test_latency_load.py, which sends this process SIGINT, SIGTERM or SIGKILL and then checks that no
load process is left. Only the load modules (``leancnn.latency.loads``, ``.quota``, ``.cleanup``, ``.worker`` and
``leancnn.loadspec``) are imported: the ``leancnn`` and ``leancnn.latency`` package ``__init__`` files (which import
torch, ~2 s) are replaced by bare namespace modules, because what is under test is the load modules' own cleanup,
and each test starts a fresh interpreter.
"""

import json
import sys
import threading
import time
import types
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "leancnn"
for name, path in (("leancnn", SRC), ("leancnn.latency", SRC / "latency")):
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    sys.modules[name] = module

from leancnn.latency.loads import CpuLoad  # noqa: E402
from leancnn.latency.quota import CpuQuota  # noqa: E402
from leancnn.loadspec import LoadSpec  # noqa: E402


def main(kind: str, workers: int, percent: int) -> int:
    try:
        with CpuLoad(LoadSpec(workers=workers, percent=percent, kind=kind), max_seconds=60) as load:
            print(json.dumps({"pids": load.pids, "leaders": sorted(load._group_ids()), "kind_used": load.kind_used}),
                  flush=True)
            time.sleep(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    return 0


def quota() -> int:
    with CpuQuota(0.5) as q:
        print(json.dumps({"path": str(q.path)}), flush=True)
        time.sleep(60)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "quota":
        sys.exit(quota())
    args = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    if len(sys.argv) > 4 and sys.argv[4] == "thread":
        worker = threading.Thread(target=main, args=args, daemon=True)
        worker.start()
        worker.join()
        sys.exit(0)
    sys.exit(main(*args))
