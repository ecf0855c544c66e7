"""Tables for ``leancnn models`` and ``leancnn data``."""

from __future__ import annotations

from pathlib import Path

from ..data import DOMAINS, describe
from ..errors import LeancnnError
from ..models import create_model, get_model_entry, list_models
from ..nn import count_macs, count_params
from ..report import format_table
from ..train import DistContext
from ..train.engine import progress_enabled


def parse_input_size(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> (3, 224, 224); a clip for video models: ``"3x8x172x172"`` -> (3, 8, 172, 172)."""
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (3, 4) or any(v <= 0 for v in size):
        raise LeancnnError(f"input size '{text}' is not of the form CxHxW or CxTxHxW (e.g. 3x32x32, 3x8x172x172)")
    return size


def model_rows(pattern: str | None = None, input_size: tuple[int, ...] | None = None) -> list[list]:
    """name, parameters, MACs (at the model's default input or ``input_size``), input, description.

    With ``input_size``, a model is built for its channel count; a model that cannot take that input shows
    "n/a" and the reason instead of failing the whole table. A registration network takes two inputs of that
    size (moving, fixed): its input shows "(x2)"."""
    rows = []
    for name in list_models(pattern):
        entry = get_model_entry(name)
        size = input_size or entry.input_size
        kwargs = {"in_chans": size[0]} if size[0] != entry.input_size[0] else {}
        try:
            model = create_model(name, **kwargs)
            macs = count_macs(model, size, num_inputs=entry.num_inputs)
            params, macs = f"{count_params(model):,}", f"{macs / 1e6:,.2f}M"
            description = entry.description
        except (LeancnnError, ValueError, RuntimeError) as e:
            params = macs = "n/a"
            description = f"cannot take {'x'.join(map(str, size))}: {str(e).splitlines()[0]}"
        rows.append([name, params, macs, "x".join(map(str, size)) + (" (x2)" if entry.num_inputs == 2 else ""),
                     description])
    return rows


def dataset_rows(names: list[str] | None = None, progress: bool | None = None) -> list[list]:
    """Build (or read from the cache) each domain and describe it. Unknown names fail before any work.

    ``progress``: a bar over the domains (and over the rendering of ``syn``, the slow one to build) on stderr;
    default: when stdout is a terminal."""
    from tqdm.auto import tqdm

    from ..data.digits import check_domain_names

    names = list(names or DOMAINS)
    check_domain_names(names)
    if progress is None:
        progress = progress_enabled(DistContext())
    rows = []
    for name in tqdm(names, desc="domains", unit="domain", leave=False, disable=not progress):
        d = describe(name, progress=progress)
        rows.append([d["name"], d["num_images"], d["num_classes"], "x".join(map(str, d["image_shape"])),
                     min(d["class_counts"]), max(d["class_counts"]), d["source"]])
    return rows


def write_sample_grid(names: list[str] | None, out, per_domain: int = 10, seed: int = 0, force: bool = False) -> Path:
    """``leancnn data grid``: every argument checked (naming its option) before any domain is loaded; an existing
    ``out`` is replaced only with ``force``."""
    from ..data.digits import check_domain_names, check_grid_per_domain, sample_grid
    from ..outputs import check_output, check_output_file
    from ..report import figure_format
    from .runs import data_inputs

    names = list(names or DOMAINS)
    check_domain_names(names)
    check_grid_per_domain(per_domain, "--per-domain")
    figure_format(out, "-o/--out")
    check_output(out, data_inputs("digits"), "-o/--out")
    check_output_file(out, force, "-o/--out")
    return sample_grid(names, out, per_domain=per_domain, seed=seed)


def inspect_text(name: str, seed: int = 0) -> str:
    """One domain: size, source, per-class counts and the sizes of its splits for ``seed``."""
    from ..data import load_domain, split_indices

    d = describe(name)
    _, labels = load_domain(name)
    splits = split_indices(labels, seed)
    counts = [[c, n] for c, n in enumerate(d["class_counts"])]
    lines = [f"{name}: {d['num_images']} images of shape {'x'.join(map(str, d['image_shape']))}, "
             f"{d['num_classes']} classes", f"source: {d['source']}",
             "splits (seed %d): " % seed + ", ".join(f"{k} {len(v)}" for k, v in splits.items()), "",
             format_table(counts, ["class", "images"])]
    return "\n".join(lines)
