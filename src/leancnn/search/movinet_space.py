"""The MoViNet search space as data (issue 22): per stage width and depth, per layer expansion width, depthwise
kernel and squeeze-excite switch, plus the stem, head projection and classifier widths.

MoViNets were found by a TuNAS-style search (Kondratyuk et al., CVPR 2021) whose depthwise kernels are
:data:`KERNELS` (``t x h x w``); the released A0–A5 use only 1x3x3, 1x5x5, 3x3x3 and 5x3x3 and all have
squeeze-excite. Here the space is a :class:`~leancnn.search.space.SearchSpace`, so a study draws points through
Optuna and a point decodes to a :class:`~leancnn.models.movinet.MovinetSpec`, hence to a model with the same
stream state, stream parity, inference form and ONNX export as A0–A5 (it is built as ``movinet_arch[_stream]``
with ``arch`` = the spec's text, so a training run rebuilds it from its checkpoint).

Parameter names (stage numbers are the reference's blocks 2..6; the spec's ``blocks[0..4]``, the state's
``block0..block4``): ``stem``, ``project``, ``dense``, then per stage ``b{i}_width`` and ``b{i}_depth`` and per
layer ``j`` (0-based) ``b{i}_l{j}_expand``, ``b{i}_l{j}_kernel`` (one of :data:`KERNELS`) and ``b{i}_l{j}_se``
(``True`` / ``False``); layer ``j > 0`` is active only while ``b{i}_depth > j``. The stage strides are fixed to the
reference's (2, 2, 2, 1, 2) (:data:`STRIDES`), so every point keeps A0–A5's resolution schedule. Widths step by 8.

Two scales, each with one fixed range per name (Optuna needs the same distribution for a name in every trial):

* ``"full"``: holds every published model (A0–A5 each encode to a point of it, ``tests/test_movinet_space.py``):
  widths 8 up to about 1.4–2x A5's, depths 1 up to A5's and a little more, expansions up to A5's rounded up
  to a power of two,
  stem 8..48, project 64..1024, dense in {256, 512, 1024, 2048}.
* ``"small"``: what we search on 2 CPU cores for the 32x32 moving-digit clips: A0 is a point of it, everything
  else is smaller or about A0's size: widths from 8 (16, 24 for the later stages) up to A0's (stage 2: 16), depths
  1 up to A0's + 1 (stage 2: 2), expansions from 8 (16, 32) up to a little above A0's widest layer of the stage
  (48, 96, 192, 192, 384), stem 8 or 16, project 64..480, dense in {256, 512, 1024, 2048}. Every range of "small" lies on the grid of "full", so a small point
  is a full point too.

``encode(spec) -> point``, ``decode(point) -> spec`` (``decode(encode(SPECS[x]))`` has ``SPECS[x]``'s text, its
input size aside), ``arch_string(point)``, ``build(point, ...) -> MoViNet``.
"""

from __future__ import annotations

import re

from ..errors import LeancnnError
from ..models.movinet import ARCH_INPUT_SIZE, ArchError, MoViNet, MovinetSpec, layer_entry
from .space import SearchSpace, categorical, integer

KERNELS = ("1x3x3", "1x5x5", "1x7x7", "3x3x3", "5x3x3", "5x1x1", "7x1x1")  # the paper's depthwise kernels (t x h x w)
STAGES = (2, 3, 4, 5, 6)  # the reference's block numbers
STRIDES = (2, 2, 2, 1, 2)  # spatial stride of each stage's first layer (fixed)
SCALES = ("full", "small")

# per scale: (low, high) of stem, project; per stage (width, depth, expand) ranges, widths and expansions step 8
_RANGES = {
    "full": {
        "stem": (8, 48), "project": (64, 1024),
        "stages": {2: ((8, 48), (1, 8), (8, 128)), 3: ((8, 128), (1, 12), (8, 256)), 4: ((8, 192), (1, 14), (8, 512)),
                   5: ((8, 192), (1, 12), (8, 512)), 6: ((8, 320), (1, 20), (8, 1024))},
    },
    "small": {  # A0: stem 8 | 8:[24] | 32:[80 x3] | 56:[184,112,184] | 56:[184 x4] | 104:[384,280,280,344] | 480
        "stem": (8, 16), "project": (64, 480),
        "stages": {2: ((8, 16), (1, 2), (8, 48)), 3: ((8, 32), (1, 4), (16, 96)), 4: ((16, 56), (1, 4), (16, 192)),
                   5: ((16, 56), (1, 5), (16, 192)), 6: ((24, 104), (1, 5), (32, 384))},
    },
}
DENSE = (256, 512, 1024, 2048)
_KERNEL_TEXT = re.compile(r"(\d+)x(\d+)x(\d+)")


def parse_kernel(text: str) -> tuple[int, int, int]:
    """``"5x3x3"`` -> ``(5, 3, 3)`` (t, h, w; odd sizes). Anything else: one-line :class:`ArchError`."""
    m = _KERNEL_TEXT.fullmatch(text) if isinstance(text, str) else None
    kernel = tuple(map(int, m.groups())) if m else ()
    if not kernel or any(k < 1 or k % 2 == 0 for k in kernel):
        raise ArchError(f"kernel {text!r} is not TxHxW with odd sizes (e.g. {', '.join(KERNELS)})")
    return kernel


def kernel_text(kernel) -> str:
    """``(5, 3, 3)`` -> ``"5x3x3"``."""
    return "x".join(str(k) for k in kernel)


def movinet_space(scale: str = "full") -> SearchSpace:
    """The MoViNet search space at ``scale`` (``"full"`` or ``"small"``; module docstring)."""
    if scale not in SCALES:
        raise LeancnnError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    r = _RANGES[scale]
    params = [integer("stem", *r["stem"], step=8, help="stem conv width"),
              integer("project", *r["project"], step=8, help="head 1x1x1 projection width"),
              categorical("dense", DENSE, help="classifier hidden width")]
    for i in STAGES:
        width, depth, expand = r["stages"][i]
        params += [integer(f"b{i}_width", *width, step=8, help=f"block {i} output width"),
                   integer(f"b{i}_depth", *depth, help=f"block {i} layers")]
        for j in range(depth[1]):
            when = None if j == 0 else (f"b{i}_depth", j)
            params += [integer(f"b{i}_l{j}_expand", *expand, step=8, when=when, help="expansion width"),
                       categorical(f"b{i}_l{j}_kernel", KERNELS, when=when, help="depthwise kernel t x h x w"),
                       categorical(f"b{i}_l{j}_se", (True, False), when=when, help="squeeze-excite")]
    return SearchSpace(f"movinet_{scale}", tuple(params))


def encode(spec: MovinetSpec) -> dict:
    """The point of the space that is ``spec`` (only its active parameters). A spec whose stages or strides are not
    the space's (5 stages, strides 2, 2, 2, 1, 2) is refused in one line; whether the values lie in a given scale's
    ranges is :meth:`SearchSpace.check`'s (``movinet_space(scale).check(encode(spec))``)."""
    if not isinstance(spec, MovinetSpec):
        raise ArchError(f"spec must be a MovinetSpec, got {type(spec).__name__}")
    spec.check()
    strides = tuple(block[1] for block in spec.blocks)
    if strides != STRIDES:
        raise ArchError(f"spec has {len(strides)} blocks with strides {strides}; the MoViNet space has the "
                        f"reference's {len(STRIDES)} with strides {STRIDES}")
    point: dict = {"stem": spec.stem, "project": spec.project, "dense": spec.dense}
    for i, (width, _, layers) in zip(STAGES, spec.blocks):
        point[f"b{i}_width"], point[f"b{i}_depth"] = width, len(layers)
        for j, entry in enumerate(layers):
            expand, kernel, se = layer_entry(entry)
            point.update({f"b{i}_l{j}_expand": expand, f"b{i}_l{j}_kernel": kernel_text(kernel), f"b{i}_l{j}_se": se})
    return point


def decode(point: dict, scale: str = "full", input_size: tuple = ARCH_INPUT_SIZE) -> MovinetSpec:
    """The :class:`MovinetSpec` of ``point``, after checking it is a point of ``movinet_space(scale)`` (one line
    naming the first wrong key). Layers with squeeze-excite are written ``(expand, kernel)``, without
    ``(expand, kernel, False)`` (the canonical form of :meth:`MovinetSpec.from_string`)."""
    movinet_space(scale).check(point, "MoViNet point")
    blocks = []
    for i, stride in zip(STAGES, STRIDES):
        layers = []
        for j in range(int(point[f"b{i}_depth"])):
            expand, kernel = int(point[f"b{i}_l{j}_expand"]), parse_kernel(point[f"b{i}_l{j}_kernel"])
            layers.append((expand, kernel) if point[f"b{i}_l{j}_se"] else (expand, kernel, False))
        blocks.append((int(point[f"b{i}_width"]), stride, tuple(layers)))
    return MovinetSpec(int(point["stem"]), tuple(blocks), int(point["project"]), int(point["dense"]),
                       input_size=tuple(input_size)).check()


def arch_string(point: dict, scale: str = "full") -> str:
    """The text of ``point``'s architecture (:meth:`MovinetSpec.to_string`; ``movinet_arch[_stream]``'s ``arch``)."""
    return decode(point, scale).to_string()


def build(point: dict, num_classes: int = 10, stream: bool = True, scale: str = "full", **kw) -> MoViNet:
    """``point``'s model, built as the registered ``movinet_arch_stream`` (``stream``) or ``movinet_arch`` with
    ``arch=arch_string(point)``, so it carries that ``model_name`` and a run rebuilds it from its checkpoint.
    ``kw``: the builder's ``dropout``, ``in_chans`` and (stream) ``positional``."""
    from ..models import create_model

    name = "movinet_arch_stream" if stream else "movinet_arch"
    return create_model(name, num_classes=num_classes, arch=arch_string(point, scale), **kw)


__all__ = ["DENSE", "KERNELS", "SCALES", "STAGES", "STRIDES", "arch_string", "build", "decode", "encode",
           "kernel_text", "movinet_space", "parse_kernel"]
