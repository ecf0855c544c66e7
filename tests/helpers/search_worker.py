"""A search worker for tests/test_search.py: ``python tests/helpers/search_worker.py STORAGE STUDY TRIALS SLEEP [HANG]``.

Runs one worker of a two-objective study on a small space with a cheap, deterministic evaluation that sleeps SLEEP
seconds (HANG: the first trial this worker evaluates sleeps 600 s, so the test can kill it mid-trial). Prints the
worker's log as one JSON line."""

import json
import sys
import time

from leancnn.search.engine import Objective, SearchSettings, run_search
from leancnn.search.space import SearchSpace, categorical, integer


def main(storage: str, study: str, trials: int, sleep: float, hang: bool = False) -> None:
    space = SearchSpace("toy", (integer("x", 0, 40), categorical("k", ["a", "b", "c"])))
    state = {"first": hang}

    def evaluate(point, info):
        if state["first"]:
            state["first"] = False
            print(json.dumps({"hanging": info.number}), flush=True)
            time.sleep(600)
        time.sleep(sleep)
        x = point["x"] + {"a": 0.0, "b": 0.5, "c": 1.0}[point["k"]]
        return {"f1": x * x, "f2": (x - 20.0) ** 2}

    settings = SearchSettings(study, storage, trials=trials, sampler="random", seed=None, join=True,
                              heartbeat_s=1, grace_s=3)
    _, log = run_search(evaluate, space, [Objective("f1", "minimize"), Objective("f2", "minimize")], settings,
                        log=None)
    print(json.dumps({"evaluated": log.evaluated, "copied": log.copied}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), len(sys.argv) > 5)
