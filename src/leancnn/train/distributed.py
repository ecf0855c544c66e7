"""Distributed data parallel (DDP) set-up from ``torchrun``'s environment: gloo on CPU, nccl on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 without it); readable before the process group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    ctx = DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend=backend)
    return ctx


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def all_gather_objects(obj, ctx: DistContext) -> list:
    if not ctx.enabled:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def reduce_sum(values: list[float], ctx: DistContext, device: torch.device) -> list[float]:
    """Sum a few scalars over ranks."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m leancnn <argv>`` in ``nproc`` processes on this machine with torchrun's machinery
    (standalone rendezvous on a free port), from this process. Returns 0, or the exit code of the first worker
    that failed. Workers report their own errors (rank 0, one line); the launcher adds no traceback and no
    log lines of its own."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from ..interrupts import LAUNCHED_ENV, Terminated

    prefixes = ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher")
    for name in [*prefixes, *logging.root.manager.loggerDict]:  # torch sets each module's logger's own level
        if name.startswith(prefixes):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    parser = get_args_parser()
    # Interrupts: the workers run in sessions of their own, so Ctrl-C reaches this process only. The agent stops
    # them with SIGTERM (which they handle like Ctrl-C once running, and die of quietly while still importing)
    # and kills those left after the timeout. Ctrl-C stays a KeyboardInterrupt here: were SIGINT the agent's, it
    # would pass SIGINT itself on to the workers, whose imports print tracebacks.
    handled = "SIGTERM,SIGHUP,SIGQUIT"
    options = {o for a in parser._actions for o in a.option_strings}  # noqa: SLF001
    signals = [f"--signals-to-handle={handled}"] if "--signals-to-handle" in options else []
    args = parser.parse_args(["--standalone", f"--nproc-per-node={nproc}", *signals, "--module", "leancnn", *argv])
    # torchrun sets OMP_NUM_THREADS=1 (with a warning) when unset; keep that choice explicit and quiet
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    saved = {k: os.environ.get(k) for k in ("TORCHELASTIC_SIGNALS_TO_HANDLE", LAUNCHED_ENV)}
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = handled  # what torch versions without the option read
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "2")
    os.environ[LAUNCHED_ENV] = str(os.getpid())  # the launcher, not rank 0, prints the one "interrupted" line
    try:
        run(args)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException:  # the agent's own handler (SIGTERM, ...): the workers are already stopped
        raise Terminated() from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return 0
