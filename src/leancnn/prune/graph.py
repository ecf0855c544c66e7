"""The dependency graph of structural (channel) pruning: Torch-Pruning's DepGraph (Fang et al. CVPR 2023) traced
on a prepared deep copy of a model, and the prunable groups it yields.

A *group* is a set of coupled channels that must be removed together: the output channels of a conv, the
BatchNorm after it, the input channels of every layer that reads them, and, through residual additions,
depthwise convs, squeeze-excite gates and concatenations, everything else tied to them. Each group is named
after its *root*: the first conv (in ``model.named_modules()`` order) whose output channels the group removes,
e.g. ``layer1.0.conv1.0`` (a conv inside a ``ConvBnAct``). Channel indices of a group are the root's output
channel indices.

:func:`prunable_groups` lists the groups (cheap metadata, :class:`GroupInfo`). The internal ``_Graph`` (made by
``_graph``; ``_probe`` also checks that every group can lose a channel) holds the traced copy, its groups and
their root modules, and removes the channels a plan drops (``_Graph.apply``, which checks that the result still
runs and names the group that breaks it). Which channels a plan keeps is decided in :mod:`leancnn.prune.plan`.

Option-A shortcuts (:class:`leancnn.models.resnet.PadShortcut`: subsample, then zero-pad channels) are not
element-wise, so Torch-Pruning would couple the two stages' residual streams as if the pad were an identity.
Every copy made here replaces them by :class:`ChannelMapShortcut`, the same function written as an index map
(output channel ``j`` is input channel ``index[j]``, or zeros), registered with Torch-Pruning as a custom layer
whose input and output channels are *not* coupled: removing an input channel turns its output channel into a
zero channel, removing an output channel drops it. The streams of the stages become separate groups, and an
unpruned copy computes exactly what the original does. The state dict is unchanged (the map is not saved; it
is rebuilt by :func:`leancnn.prune.apply_plan`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import LeancnnError
from ..models.resnet import PadShortcut
from ..nn.layers import TapCroppedConv2d

__all__ = ["ChannelMapShortcut", "GroupInfo", "prunable_groups"]

_ROOT_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU,
                nn.Sigmoid, nn.Tanh, nn.Hardtanh)
# module types whose parameters Torch-Pruning knows how to slice
_KNOWN_PARAM_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
                      nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU, nn.Embedding)
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels, tp.prune_depthwise_conv_out_channels)
_IN_FNS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


# ------------------------------------------------------------------------------------------------ shortcut


_TRACING = False  # set while Torch-Pruning traces a copy: ChannelMapShortcut then is one autograd node


class _ChannelMapFn(torch.autograd.Function):
    """The channel map as a single autograd node, so the tracer sees one op between input and output."""

    @staticmethod
    def forward(ctx, x, gather, stride):  # noqa: D401
        ctx.save_for_backward(gather)
        ctx.shape, ctx.stride = x.shape, stride
        return _gather(x, gather, stride)

    @staticmethod
    def backward(ctx, grad):
        (gather,) = ctx.saved_tensors
        shape, s = ctx.shape, ctx.stride
        gx = grad.new_zeros(shape[0], shape[1] + 1, *shape[2:])
        sub = gx[:, :, ::s, ::s] if len(shape) == 4 else gx
        sub.index_add_(1, gather, grad)
        return gx[:, : shape[1]], None, None


def _gather(x: torch.Tensor, gather: torch.Tensor, stride: int) -> torch.Tensor:
    channels_last = x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    zero = x.new_zeros(x.shape[0], 1, *x.shape[2:])
    out = torch.cat([x, zero], 1).index_select(1, gather)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)  # keep the CPU's fast layout for what follows
    return out


class ChannelMapShortcut(nn.Module):
    """Parameter-free shortcut: spatial subsampling by ``stride``, then output channel ``j`` is input channel
    ``index[j]``, or zeros where ``index[j] == -1``. With ``index = [0, …, in-1, -1, …]`` it is the option-A
    shortcut (:class:`~leancnn.models.resnet.PadShortcut`) and runs as the same slice + ``F.pad``; after pruning it
    runs as a concatenation with one zero channel and an ``index_select``. The map is a non-persistent buffer."""

    def __init__(self, index: Sequence[int], in_channels: int, stride: int = 1):
        super().__init__()
        self.in_channels, self.stride = int(in_channels), int(stride)
        self.register_buffer("index", torch.as_tensor(list(index), dtype=torch.long), persistent=False)
        self.register_buffer("gather", torch.zeros(0, dtype=torch.long), persistent=False)
        self._update()

    @property
    def out_channels(self) -> int:
        return int(self.index.numel())

    def _update(self) -> None:
        idx = self.index.tolist()
        n_in = self.in_channels
        self._pad = (len(idx) - n_in) if idx == list(range(n_in)) + [-1] * (len(idx) - n_in) else None
        self.gather = torch.tensor([n_in if i < 0 else i for i in idx], dtype=torch.long, device=self.index.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _TRACING:
            return _ChannelMapFn.apply(x, self.gather, self.stride)
        if self._pad is not None:
            if self.stride != 1:
                x = x[:, :, :: self.stride, :: self.stride]
            return F.pad(x, (0, 0, 0, 0, 0, self._pad)) if x.ndim == 4 else F.pad(x, (0, 0, 0, self._pad))
        return _gather(x, self.gather, self.stride)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, stride={self.stride}"


class _ChannelMapPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning handler of :class:`ChannelMapShortcut`: input and output channels are not coupled."""

    def prune_out_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        drop = set(int(i) for i in idxs)
        layer.index = layer.index[[j for j in range(layer.out_channels) if j not in drop]]
        layer._update()
        return layer

    def prune_in_channels(self, layer: ChannelMapShortcut, idxs: Sequence[int]) -> nn.Module:
        drop = set(int(i) for i in idxs)
        new_pos, k = {}, 0
        for c in range(layer.in_channels):
            if c not in drop:
                new_pos[c] = k
                k += 1
        layer.index = torch.tensor([new_pos.get(int(i), -1) for i in layer.index.tolist()], dtype=torch.long,
                                   device=layer.index.device)
        layer.in_channels = k
        layer._update()
        return layer

    def get_out_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ChannelMapShortcut) -> int:
        return layer.in_channels


# ------------------------------------------------------------------------------------------------ groups


@dataclass(frozen=True)
class GroupInfo:
    """One prunable group.

    ``name``: qualified name of the root conv (how the group is found again on a fresh copy of the model);
    ``n_channels``: its output channels; ``layers``: every module whose tensors the group slices (convs, norms,
    linears, shortcuts), in group order; ``producers``: the layers whose *output* channels are removed;
    ``consumers``: the layers whose *input* channels are removed; ``bn``: the BatchNorm right after the root
    conv (``None`` if there is none); ``act``: the activation module right after the root conv / its BN inside
    the same ``nn.Sequential`` (``None`` if there is none); ``depthwise``: the root is a depthwise conv."""

    name: str
    n_channels: int
    layers: tuple[str, ...]
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    bn: str | None = None
    act: str | None = None
    depthwise: bool = False


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _first_input(example_inputs: Any) -> torch.Tensor:
    if isinstance(example_inputs, torch.Tensor):
        return example_inputs
    if isinstance(example_inputs, (list, tuple)) and example_inputs and isinstance(example_inputs[0], torch.Tensor):
        return example_inputs[0]
    raise LeancnnError("example_inputs must be a tensor (or a list/tuple whose first item is the input tensor)")


def _input_size(example_inputs: Any, input_size: Sequence[int] | None) -> tuple[int, ...]:
    if input_size is not None:
        return tuple(int(s) for s in input_size)
    return tuple(_first_input(example_inputs).shape[1:])


def _call(model: nn.Module, example_inputs: Any) -> Any:
    if isinstance(example_inputs, (list, tuple)):
        return model(*example_inputs)
    return model(example_inputs)


@contextlib.contextmanager
def _tracing():
    """Plain convs (no tap cropping) and single-node channel maps while Torch-Pruning traces."""
    global _TRACING
    crop, _TRACING = TapCroppedConv2d.crop, True
    TapCroppedConv2d.crop = False
    try:
        yield
    finally:
        TapCroppedConv2d.crop, _TRACING = crop, False


def _replace_shortcuts(model: nn.Module, example_inputs: Any) -> None:
    """Swap every PadShortcut for the equivalent ChannelMapShortcut (in place, on a copy)."""
    pads = [(n, m) for n, m in model.named_modules() if isinstance(m, PadShortcut)]
    if not pads:
        return
    in_ch: dict[str, int] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: in_ch.__setitem__(n, args[0].shape[1]))
               for n, m in pads]
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no BatchNorm statistics update from the example input
    try:
        with torch.no_grad():
            _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    for name, mod in pads:
        if name not in in_ch:
            continue  # never called: leave it (it does not take part in the graph)
        n_in = in_ch[name]
        new = ChannelMapShortcut(list(range(n_in)) + [-1] * mod.pad, n_in, mod.stride).to(_device_of(model))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)


def _check_modules(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups and not (
                m.groups == m.out_channels == m.in_channels):
            raise LeancnnError(f"layer '{name}': grouped convolution (groups={m.groups}) that is not depthwise; "
                               "structural pruning does not handle it")
        if isinstance(m, _KNOWN_PARAM_TYPES):
            continue
        own = [(pn, p) for pn, p in m.named_parameters(recurse=False) if sum(s > 1 for s in p.shape) > 0]
        if own:
            raise LeancnnError(f"layer '{name or type(m).__name__}' ({type(m).__name__}) has parameters "
                               f"{[pn for pn, _ in own]} that torch-pruning cannot slice; structural pruning "
                               "does not handle this module")


def _names(model: nn.Module, layers: Iterable[nn.Module | str]) -> set[str]:
    by_id = {id(m): n for n, m in model.named_modules()}
    names = set()
    for layer in layers:
        if isinstance(layer, str):
            names.add(layer)
        elif id(layer) in by_id:
            names.add(by_id[id(layer)])
        else:
            raise LeancnnError(f"ignored layer {type(layer).__name__} is not a module of the model")
    return names


class _Graph:
    """A prepared deep copy of a model with its dependency graph and groups (internal)."""

    def __init__(self, model: nn.Module, example_inputs: Any, ignored_layers: Iterable[nn.Module | str] = (),
                 include_linear: bool = False):
        ignored = _names(model, ignored_layers)
        self.source, self.include_linear = model, include_linear
        self.model = copy.deepcopy(model)
        self.example_inputs = example_inputs
        modes = {m: m.training for m in self.model.modules()}
        _check_modules(self.model)
        _replace_shortcuts(self.model, example_inputs)
        self.name_of = {m: n for n, m in self.model.named_modules()}
        unknown = ignored - set(self.name_of.values())
        if unknown:
            raise LeancnnError(f"ignored layers not in the model: {sorted(unknown)}")
        try:
            with _tracing(), torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.DG = tp.DependencyGraph().build_dependency(
                    self.model, example_inputs, customized_pruners={ChannelMapShortcut: _ChannelMapPruner()},
                    verbose=False)
        except LeancnnError:
            raise
        except Exception as exc:  # noqa: BLE001 - report which model could not be traced
            raise LeancnnError(f"torch-pruning could not trace {type(model).__name__}: {exc}") from exc
        finally:
            for m, mode in modes.items():
                m.training = mode
        self.ignored = ignored | self._output_layers()
        self._enumerate(include_linear)

    def _output_layers(self) -> set[str]:
        """The conv/linear layers that produce the model's outputs (never pruned)."""
        out, seen = set(), set()
        # the graph's sinks: a layer whose output is the model output, or the virtual output op after it
        stack = [n for n in self.DG.module2node.values() if not n.outputs]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if isinstance(node.module, (nn.modules.conv._ConvNd, nn.Linear)):
                out.add(self.name_of[node.module])
            else:
                stack.extend(node.inputs)
        return out

    def _enumerate(self, include_linear: bool) -> None:
        roots = _ROOT_CONV + ((nn.Linear,) if include_linear else ())
        visited: set[nn.Module] = set()
        self.groups: list[GroupInfo] = []
        self.full: dict[str, Any] = {}  # group name -> tp Group with all indices
        self.root: dict[str, nn.Module] = {}
        for name, m in self.model.named_modules():
            if not isinstance(m, roots) or m in visited or m not in self.DG.module2node:
                continue
            fn = tp.prune_linear_out_channels if isinstance(m, nn.Linear) else tp.prune_conv_out_channels
            n = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            group = self.DG.get_pruning_group(m, fn, list(range(n)))
            layers, producers, consumers = [], [], []
            for dep, _ in group:
                mod = dep.target.module
                if not isinstance(mod, nn.Module) or mod not in self.name_of:
                    continue
                lname = self.name_of[mod]
                if lname not in layers:
                    layers.append(lname)
                if dep.handler in _OUT_FNS and isinstance(mod, (nn.modules.conv._ConvNd, nn.Linear)):
                    visited.add(mod)
                    if lname not in producers:
                        producers.append(lname)
                elif dep.handler in _IN_FNS and lname not in consumers:
                    consumers.append(lname)
            if any(p in self.ignored for p in producers):
                continue
            bn, act = self._bn_act(m, name)
            self.groups.append(GroupInfo(name, n, tuple(layers), tuple(producers), tuple(consumers), bn, act,
                                         isinstance(m, nn.modules.conv._ConvNd) and m.groups == n and n > 1))
            self.full[name] = group
            self.root[name] = m
        self.by_name = {g.name: g for g in self.groups}

    def _bn_act(self, root: nn.Module, name: str) -> tuple[str | None, str | None]:
        bn = None
        for out in self.DG.module2node[root].outputs:
            if isinstance(out.module, nn.modules.batchnorm._BatchNorm):
                bn = self.name_of[out.module]
        act = None
        parent_name, _, attr = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        if isinstance(parent, nn.Sequential):
            names = [k for k, _ in parent.named_children()]
            for k in names[names.index(attr) + 1:]:
                child = parent.get_submodule(k)
                full = f"{parent_name}.{k}" if parent_name else k
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and full == bn:
                    continue
                if isinstance(child, _ACTIVATIONS):
                    act = full
                break
        return bn, act

    # -- pruning -----------------------------------------------------------------------------------------

    def check_plan(self, plan: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
        unknown = set(plan) - set(self.by_name)
        if unknown:
            raise LeancnnError(f"plan names unknown groups {sorted(unknown)}; the model's groups are "
                               f"{[g.name for g in self.groups]}")
        clean = {}
        for name, kept in plan.items():
            n = self.by_name[name].n_channels
            kept = sorted(int(i) for i in kept)
            if not kept or len(set(kept)) != len(kept) or kept[0] < 0 or kept[-1] >= n:
                raise LeancnnError(f"plan for group '{name}' ({n} channels) must keep distinct indices in "
                                   f"[0, {n}), at least one; got {len(kept)} indices")
            clean[name] = kept
        return clean

    def apply(self, plan: Mapping[str, Sequence[int]], check: bool = True) -> nn.Module:
        """Prune this copy in place by ``plan`` and check that it still runs; returns the pruned model."""
        plan = self.check_plan(plan)
        for name, kept in plan.items():
            n = self.by_name[name].n_channels
            drop = sorted(set(range(n)) - set(kept))
            if not drop:
                continue
            root = self.root[name]
            fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
            self.DG.get_pruning_group(root, fn, drop).prune(record_history=False)
        if not check:
            return self.model
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                _call(self.model, self.example_inputs)
        except Exception as exc:  # noqa: BLE001
            diag = _diagnose(self, plan) or ("a layer that changes the channel count without a torch-pruning "
                                             "handler is probably involved")
            raise LeancnnError(f"the pruned model does not run: {diag} ({exc})") from exc
        finally:
            for m, mode in modes.items():
                m.training = mode
        return self.model


def _diagnose(graph: _Graph, plan: Mapping[str, Sequence[int]]) -> str:
    """Find the first group whose pruning alone breaks the forward pass (slow path, errors only)."""
    for name, kept in plan.items():
        if len(kept) == graph.by_name[name].n_channels:
            continue
        g = _Graph(graph.source, graph.example_inputs, graph.ignored, graph.include_linear)
        try:
            g.apply({name: kept}, check=False)
            g.model.eval()
            with torch.no_grad():
                _call(g.model, g.example_inputs)
        except Exception:  # noqa: BLE001
            return (f"Pruning group '{name}' alone breaks it: an operation among its layers "
                    f"{list(graph.by_name[name].layers)} changes the channel count in a way torch-pruning does not "
                    "trace (e.g. repeat, channel padding, a reshape across channels); add the layer to "
                    "ignored_layers or give it a torch-pruning handler")
    return ""


def _graph(model: nn.Module, example_inputs: Any, ignored_layers=(), include_linear: bool = False) -> _Graph:
    return _Graph(model, example_inputs, ignored_layers, include_linear)


def _probe(model: nn.Module, example_inputs: Any, ignored_layers=(), include_linear: bool = False) -> _Graph:
    """Build the graph, and check on a second copy that removing one channel of every group keeps the model
    running (names the offending group otherwise). Returns the (unpruned) first graph."""
    graph = _graph(model, example_inputs, ignored_layers, include_linear)
    _graph(model, example_inputs, ignored_layers, include_linear).apply(
        {g.name: list(range(g.n_channels - 1)) for g in graph.groups if g.n_channels > 1})
    return graph


def prunable_groups(model: nn.Module, example_inputs: Any, ignored_layers: Iterable[nn.Module | str] = (),
                    include_linear: bool = False) -> list[GroupInfo]:
    """The prunable groups of ``model`` (traced with DepGraph on a deep copy; ``model`` is not modified).

    Roots are convolutions (and, with ``include_linear``, hidden linear layers). The layer(s) producing the
    model's output (the classifier) are always ignored; a group is left out when any layer whose outputs it
    would remove is in ``ignored_layers`` (modules of ``model`` or their qualified names). A module that
    cannot be pruned structurally (parameters of an unknown module type, a grouped non-depthwise conv) raises
    :class:`LeancnnError` naming the layer."""
    return _probe(model, example_inputs, ignored_layers, include_linear).groups
