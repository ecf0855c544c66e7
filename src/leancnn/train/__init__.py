"""The training engine: loop, optimiser/schedule, checkpoint + resume, DDP, seeding."""

from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .distributed import DistContext, cleanup_distributed, init_distributed
from .engine import Task, Trainer
from .optim import build_optimizer, build_scheduler, lr_factor
from .seed import get_rng_state, seed_everything, set_rng_state

__all__ = ["DistContext", "Task", "Trainer", "build_optimizer", "build_scheduler", "cleanup_distributed", "get_rng_state", "init_distributed", "load_checkpoint",
           "load_model_state", "lr_factor", "save_checkpoint", "seed_everything", "set_rng_state"]
