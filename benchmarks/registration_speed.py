"""Registration speed for docs/benchmarks.md (issue 13, part 8): inference time per MR-US pair and training step
time, for each network size, on 1 and 2 CPU threads (and CUDA when present).

Inference per pair = what `leancnn register predict` does for a pair already in memory: the moving image put on
the fixed grid (centred), both resized to the network grid, the forward pass (batch 1), the DDF resized to the
47×63×44 fixed grid, the moving image warped by it. The training step = one batch of 4 pairs on the network
grid: forward, multi-scale Dice + bending energy, backward, AdamW step. Medians of ``--repeats`` timings after
warm-up; the ratio column is against the default network (local, 8-16-32-64, grid 24×32×22) at 1 thread,
measured in the same run.

    python benchmarks/registration_speed.py [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import ROOT, median_time, write_section  # noqa: E402

from leancnn.config import load_config  # noqa: E402
from leancnn.data.registration import PairedNifti  # noqa: E402
from leancnn.losses.registration import bending_energy, multiscale_dice_loss  # noqa: E402
from leancnn.models.regnet import count_params  # noqa: E402
from leancnn.nn.warp import warp  # noqa: E402
from leancnn.report import format_table  # noqa: E402
from leancnn.tasks.register import RegisterConfig, build_model, net_shape, pair_initial_map, predict_ddf, warp_moving  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mrus"
NETS = [  # label, overrides, data.scale
    ("affine (global 8-16-32-64)", ["model.kind=global"], 0.5),
    ("local ¼ width (4-8-16-32)", ["model.channels=[4,8,16,32]"], 0.5),
    ("local (8-16-32-64), default", [], 0.5),
    ("local 2× width (16-32-64-128)", ["model.channels=[16,32,64,128]"], 0.5),
    ("composite (8-16-32-64 + 4-8-16-32)", ["model.kind=composite"], 0.5),
    ("local (8-16-32-64), full grid", [], 1.0),
    ("local, label-reg width (32-64-128-256), full grid", ["model.channels=[32,64,128,256]"], 1.0),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    nets = NETS[:3] if args.quick else NETS
    repeats = 3 if args.quick else args.repeats
    pair = PairedNifti(args.data)[0]
    fixed_shape = pair.fixed_image.shape
    devices = [("cpu", 1), ("cpu", 2)] + ([("cuda", 0)] if torch.cuda.is_available() else [])
    rows, base = [], {}
    for label, overrides, scale in nets:
        cfg = load_config(None, [f"data.scale={scale}", *overrides], cls=RegisterConfig)
        grid = net_shape(fixed_shape, scale)
        cells = []
        for dev_name, threads in devices:
            device = torch.device(dev_name)
            if threads:
                torch.set_num_threads(threads)
            torch.manual_seed(0)
            model = build_model(cfg, grid).to(device)
            matrix = pair_initial_map(pair, "centre")

            def infer():
                with torch.no_grad():
                    ddf = predict_ddf(model, pair, scale, device, "centre")
                    warp_moving(pair.moving_image, ddf, matrix)
                sync(device)

            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.rand(4, 1, *grid, device=device)
            y = torch.rand(4, 1, *grid, device=device)
            lab = (torch.rand(4, 1, *grid, device=device) > 0.5).float()

            def step():
                model.train()
                ddf = model(x, y)["ddf"]
                loss = multiscale_dice_loss(warp(lab, ddf), lab) + 0.5 * bending_energy(ddf)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sync(device)

            t_inf = median_time(infer, repeats, warmup=2)
            t_step = median_time(step, max(3, repeats // 3), warmup=2)
            key = f"{dev_name}{threads}"
            if label.endswith("default"):
                base[key] = (t_inf, t_step)
            cells.append((key, t_inf, t_step))
        rows.append((label, count_params(build_model(cfg, grid)), grid, cells))
        print(label, [(k, f"{1e3 * a:.0f} ms", f"{1e3 * b:.0f} ms") for k, a, b in cells], flush=True)
    ref_inf, ref_step = base["cpu1"]
    headers = ["network", "params", "grid"]
    for dev_name, threads in devices:
        name = f"{threads} thread{'s' if threads > 1 else ''}" if dev_name == "cpu" else "CUDA"
        headers += [f"inference/pair, {name}", f"train step (4 pairs), {name}"]
    table = []
    for label, params, grid, cells in rows:
        row = [label, f"{params / 1e6:.2f} M", "×".join(map(str, grid))]
        for _, t_inf, t_step in cells:
            row += [f"{1e3 * t_inf:.0f} ms ({t_inf / ref_inf:.2f}×)", f"{1e3 * t_step:.0f} ms ({t_step / ref_step:.2f}×)"]
        table.append(row)
    text = format_table(table, headers, markdown=True)
    print(format_table(table, headers))
    body = (f"{text}\n\nMedians of {repeats} timings after warm-up (training steps: {max(3, repeats // 3)}); in "
            "brackets the ratio to the default network at 1 thread, measured in the same run. Inference is a whole "
            "pair: initial mapping, resizes, forward pass (batch 1), DDF to the 47×63×44 fixed grid, warping the "
            "moving image.")
    if not args.no_doc:
        write_section("benchmarks.md", "registration-speed", "Registration: inference and training speed (issue 13)",
                      body)


if __name__ == "__main__":
    main()
