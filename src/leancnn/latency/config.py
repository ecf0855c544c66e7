"""The schema of a latency run (``leancnn latency run``, docs/latency.md): :class:`LatencyConfig` and its
sections, the models (:class:`LatencyModelConfig`), the grid of conditions (:class:`LatencyGridConfig`, its load
levels :class:`LatencyLoadConfig`), the measurement protocol and the analysis.

The latency library's own schema: :mod:`leancnn.latency.measure` plans and measures its conditions and
:mod:`leancnn.tasks.latency` runs it. Loaded, checked and overridden by the rule engine of :mod:`leancnn.config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from ..config import SEED_MAX, rule
from ..errors import ConfigError
from ..loadspec import LoadSpec
from ..threads import allowed_cpus


@dataclass
class LatencyModelConfig:
    """One model of a latency grid: exactly one of ``name`` (a registered model, random weights),
    ``checkpoint`` (a training run directory or ``.pt``), ``onnx`` (an ``.onnx`` file: onnxruntime only) or ``pte``
    (an ExecuTorch program written by ``leancnn export``, fp32 or int8 as it is: the executorch backend only)."""

    name: str | None = None
    checkpoint: str | None = None
    onnx: str | None = None
    pte: str | None = None
    # input shape without the batch: (C, H, W) for an image classifier, (C, T, H, W) for a video model; for a
    # stream MoViNet T is the frames fed per stream step. Default: the registry's input size (a stream model: one
    # frame per step at the registry's H x W), a run's training size, the ONNX file's own input shape.
    input: list[int] | None = rule(None, min_len=3, max_len=4, ge=1)
    label: str | None = rule(None, nonempty=True)  # the name in tables (default: the model's name / file stem)
    num_classes: int | None = rule(None, ge=1)  # registered models: default the registry's
    # a stream MoViNet: "stream_step" times one step with the state carried (default); "clip" times the whole
    # input clip as one causal pass
    mode: Literal["stream_step", "clip"] = "stream_step"


@dataclass
class LatencyLoadConfig:
    """One contention level (``leancnn.loadspec.LoadSpec``): ``workers`` CPU hogs busy ``percent`` % of the
    time, optionally pinned (a list of CPU ids, or "spread": one CPU each), by stress-ng or the Python fallback."""

    workers: int = 0
    percent: int = 100
    pin: list[int] | str | None = None
    kind: Literal["auto", "stress-ng", "python"] = "auto"


@dataclass
class LatencyGridConfig:
    """The conditions: every load level (and every CPU quota) x threads x backend x batch size."""

    loads: list[LatencyLoadConfig] = field(default_factory=lambda: [LatencyLoadConfig(0), LatencyLoadConfig(1)])
    # CPU-quota conditions (cores, e.g. 0.5): the measuring process under a cgroup bandwidth limit, no load;
    # skipped with a note where neither cgroup v1 nor v2 is writable
    quotas: list[float] = rule(factory=list, gt=0.0, unique=True)
    threads: list[int] = rule(factory=lambda: [1], ge=1, min_len=1, unique=True)
    # executorch / executorch_int8: the model lowered to an ExecuTorch program with the XNNPACK delegate, fp32 or
    # int8 (calibrated on random inputs: the timing holds, the accuracy does not), run in ExecuTorch's runtime
    backends: list[Literal["eager", "compile", "onnxruntime", "executorch", "executorch_int8"]] = rule(
        factory=lambda: ["eager"], min_len=1, unique=True)
    batch_sizes: list[int] = rule(factory=lambda: [1], ge=1, min_len=1, unique=True)


@dataclass
class LatencyProtocolConfig:
    """How each condition is measured (docs/latency.md)."""

    warmup: int = rule(10, ge=0)  # untimed inferences per model per condition (torch.compile: after compiling)
    samples: int = rule(200, ge=2)  # timed inferences per model per condition
    block: int = rule(10, ge=1)  # consecutive inferences of one model in a block; models in random order per block
    # time budget of a condition's timed blocks (warm-up and compilation excluded): stop after the current block
    condition_seconds: float = rule(120.0, gt=0.0)
    settle_seconds: float = rule(1.0, ge=0.0)  # wait after a load starts, before the warm-up
    seed: int = rule(0, ge=0, lt=SEED_MAX)  # model order in the blocks
    memory_format: Literal["channels_last", "contiguous"] = "channels_last"  # 4-D image inputs, eager/compile
    ort_spinning: bool = True  # onnxruntime's intra-op spinning (its default); false = session.intra_op.allow_spinning 0


@dataclass
class LatencyAnalysisConfig:
    quantiles: list[float] = rule(factory=lambda: [0.5, 0.99], gt=0.0, lt=1.0, min_len=1, unique=True)
    alpha: float = rule(0.05, gt=0.0, lt=1.0)  # family-wise error rate over all pairwise tests (Holm)
    margin: float = rule(0.02, ge=0.0, lt=1.0)  # relative tie band: closer than this is "tie"
    recommend_quantile: float = rule(0.99, gt=0.0, lt=1.0)
    recommend_rule: Literal["minimax", "mean_rank", "regret"] = "minimax"


@dataclass
class LatencyConfig:
    """``leancnn latency run``: models x conditions, measured with real co-running load (docs/latency.md)."""

    name: str = rule("latency", name=True)
    output_dir: str = rule("runs", nonempty=True)
    device: Literal["cpu", "cuda"] = "cpu"  # where the models run; the load is always on the CPU
    models: list[LatencyModelConfig] = rule(factory=lambda: [LatencyModelConfig(name="resnet20"),
                                                             LatencyModelConfig(name="mobilenetv3_small")],
                                            min_len=1)
    grid: LatencyGridConfig = field(default_factory=LatencyGridConfig)
    protocol: LatencyProtocolConfig = field(default_factory=LatencyProtocolConfig)
    analysis: LatencyAnalysisConfig = field(default_factory=LatencyAnalysisConfig)

    def _check(self) -> None:
        if not self.grid.loads and not self.grid.quotas:
            raise ConfigError("config key 'grid': no conditions (grid.loads and grid.quotas are both empty); give at "
                              "least one load level, e.g. grid.loads=[{workers: 0}]")
        cores = len(allowed_cpus())
        for i, q in enumerate(self.grid.quotas):
            if q > cores:  # a bandwidth limit above the CPUs the process may use limits nothing
                raise ConfigError(f"config key 'grid.quotas[{i}]' = {q:g} is above the {cores} CPU(s) this process may "
                                  f"run on (os.sched_getaffinity); allowed: (0, {cores}] cores")
        for i, m in enumerate(self.models):
            given = [k for k in ("name", "checkpoint", "onnx", "pte") if getattr(m, k) is not None]
            if len(given) != 1:
                raise ConfigError(f"config key 'models[{i}]' needs exactly one of name (a registered model), "
                                  f"checkpoint (a run directory or .pt), onnx (an .onnx file) or pte (an ExecuTorch "
                                  f".pte from leancnn export); got {given or 'none'}")
        for i, load in enumerate(self.grid.loads):
            try:
                LoadSpec(**dataclasses.asdict(load))
            except ConfigError as e:
                raise ConfigError(str(e).replace("config key 'load.", f"config key 'grid.loads[{i}].")) from None
        labels = [m.label for m in self.models if m.label]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ConfigError(f"config key 'models': label(s) {dup} used more than once")
