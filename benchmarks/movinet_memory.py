"""MoViNet stream inference runs in constant memory: peak RSS of streaming a clip frame by frame (and in 8-frame
chunks) against whole-clip inference of the base model, for clips of 16, 64 and 256 frames; and the size of the
stream state of A0-A5 at the paper's resolutions -> docs/benchmarks.md.

    python benchmarks/movinet_memory.py [--models a0 a1] [--frames 16 64 256] [--quick]

Every configuration runs in a fresh subprocess (``--child``): it builds the model (random weights, eval mode,
batch 1, float32, ``torch.inference_mode``, 1 thread), warms up (the base model on 2 frames, a stream two steps
of its chunk size, state thrown away: oneDNN caches, allocator pools), allocates its input where there is one, then resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), records the RSS, runs, and reads the peak (``resource.getrusage().ru_maxrss``,
the same counter). Reported: the peak RSS of the process and the peak minus the RSS just before the run (what
the inference itself adds). The base model gets its whole clip as one tensor, allocated before the baseline (its
size is in the table); the stream runs generate their frames on the fly (one ``torch.randn`` per step), so no
input clip exists and the numbers are the model's alone. The script exits non-zero unless every stream peak
grows by at most 1% from the shortest clip to the longest.

The allocator: glibc raises its mmap threshold every time a large block is freed, after which tensors of a few
hundred KiB come from the heap, whose RSS then wanders with the order of allocations (±5% over a few steps of
8-frame chunks, up and down; a fixed threshold keeps it flat to 0.3 MiB). The measured runs therefore set
``MALLOC_MMAP_THRESHOLD_=131072`` (glibc's initial value, fixed), so RSS follows the live tensors; every
configuration is also run with glibc's default and its peak reported beside (not asserted).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from _common import write_section

from leancnn import create_model, report
from leancnn.models import get_model_entry
from leancnn.models.movinet import state_nbytes

MIB = 2 ** 20
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, made fixed (see the module docstring)
MODES = ("base whole clip", "stream 1 frame/step", "stream 8 frames/step", "stream fused 1 frame/step")
# The reference's stream-buffer sizes (MiB, batch 1, fp32, (2+1)-D placement): ../shared/reference/movinet.md §6
REFERENCE_BUFFERS_MIB = {"a0": 2.56, "a1": 4.63, "a2": 10.3, "a3": 17.4, "a4": 47.1, "a5": 71.5}


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset the peak RSS ("high water mark") to the current RSS
        return True
    except OSError:
        return False


def child(mode: str, model_name: str, frames: int, side: int) -> dict:
    """One measurement in this (fresh) process; returns numbers in bytes and seconds."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    stream = mode.startswith("stream")
    model = create_model(f"movinet_{model_name}{'_stream' if stream else ''}").eval()
    if "fused" in mode:
        model = model.fuse_for_inference()
    chunk = 8 if "8 frames" in mode else 1
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # warm-up: first-call allocations (caches, pools) are not the inference's
        if stream:  # two steps of the measured kind, state thrown away
            model.stream_step(torch.randn(1, 3, chunk, side, side, generator=g),
                              model.stream_step(torch.randn(1, 3, chunk, side, side, generator=g))[1])
        else:
            model(torch.randn(1, 3, 2, side, side, generator=g))
        clip = torch.randn(1, 3, frames, side, side, generator=g) if not stream else None
        input_bytes = 0 if clip is None else clip.numel() * clip.element_size()
        reset = _reset_peak()
        before = _rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        if stream:
            state, seen = None, 0
            while seen < frames:
                n = min(chunk, frames - seen)
                logits, state = model.stream_step(torch.randn(1, 3, n, side, side, generator=g), state)
                seen += n
            assert int(state["frame_count"]) == frames
            state_bytes = state_nbytes(state)
        else:
            logits = model(clip)
            state_bytes = 0
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert torch.isfinite(logits).all()
    return {"mode": mode, "model": model_name, "frames": frames, "side": side, "rss_before": before,
            "peak": peak, "peak_before": peak_before, "peak_reset": reset, "input_bytes": input_bytes,
            "state_bytes": state_bytes, "seconds": seconds}


def run_child(mode: str, model_name: str, frames: int, side: int, fixed_mmap: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, model_name, str(frames), str(side)]
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if fixed_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def state_table() -> str:
    rows = []
    for name in REFERENCE_BUFFERS_MIB:
        model = create_model(f"movinet_{name}_stream")
        side = get_model_entry(f"movinet_{name}_stream").input_size[2]
        state = model.init_state(1, side, side)
        buffers = {k: v for k, v in state.items() if k.endswith("stream_buffer")}
        rows.append([name.upper(), f"{side}×{side}", len(buffers), f"{REFERENCE_BUFFERS_MIB[name]:.2f}",
                     f"{state_nbytes(buffers) / MIB:.2f}", f"{state_nbytes(state) / MIB:.2f}",
                     f"{(state_nbytes(state) - state_nbytes(buffers)) / 1024:.1f}"])
    return report.format_table(rows, ["model", "input", "buffered convs", "reference buffers MiB",
                                      "our buffers MiB", "our whole state MiB", "SE + head sums + count KiB"],
                               markdown=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["a0", "a1"], choices=list(REFERENCE_BUFFERS_MIB))
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--side", type=int, default=None, help="input side (default: the model's paper input)")
    ap.add_argument("--quick", action="store_true", help="A0 only, 8 and 32 frames at 96x96, no docs")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "MODEL", "FRAMES", "SIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, name, frames, side = args.child
        print(json.dumps(child(mode, name, int(frames), int(side))))
        return
    if args.quick:
        args.models, args.frames, args.side, args.no_docs = ["a0"], [8, 32], 96, True
    start = time.perf_counter()
    results = []
    for name in args.models:
        side = args.side or get_model_entry(f"movinet_{name}").input_size[2]
        for frames in args.frames:
            for mode in MODES:
                r = run_child(mode, name, frames, side, fixed_mmap=True)
                r["peak_default_malloc"] = run_child(mode, name, frames, side, fixed_mmap=False)["peak"]
                results.append(r)
                print(f"{name} {side}x{side} {frames:4d} frames  {mode:26s} peak {r['peak'] / MIB:7.1f} MiB, "
                      f"+{(r['peak'] - r['rss_before']) / MIB:7.1f} MiB over the RSS before the run, "
                      f"{r['seconds']:.1f} s; default malloc: peak {r['peak_default_malloc'] / MIB:7.1f} MiB",
                      flush=True)
    rows, failures = [], []
    for name in args.models:
        for mode in MODES:
            mine = sorted((r for r in results if r["model"] == name and r["mode"] == mode), key=lambda r: r["frames"])
            first = mine[0]
            for r in mine:
                growth = r["peak"] / first["peak"] - 1
                default = r["peak_default_malloc"] / first["peak_default_malloc"] - 1
                rows.append([name.upper(), f"{r['side']}×{r['side']}", mode, r["frames"],
                             f"{r['input_bytes'] / MIB:.0f}" if r["input_bytes"] else "–",
                             f"{r['peak'] / MIB:.1f}", f"{(r['peak'] - r['rss_before']) / MIB:.1f}",
                             f"{100 * growth:+.2f}%" if r is not first else "",
                             f"{r['peak_default_malloc'] / MIB:.1f}" + (f" ({100 * default:+.1f}%)"
                                                                        if r is not first else ""),
                             f"{r['state_bytes'] / MIB:.2f}" if r["state_bytes"] else "–", f"{r['seconds']:.1f}"])
            if mode.startswith("stream"):
                growth = mine[-1]["peak"] / first["peak"] - 1
                if growth > 0.01:
                    failures.append(f"{name} {mode}: peak RSS grew {100 * growth:.2f}% from {first['frames']} to "
                                    f"{mine[-1]['frames']} frames")
    table = report.format_table(rows, ["model", "input", "inference", "frames", "input clip MiB", "peak RSS MiB",
                                       "peak − RSS before run MiB", "peak vs shortest clip",
                                       "peak RSS MiB, glibc default", "state MiB", "time s"], markdown=True)
    states = state_table()
    print(table + "\n\n" + states)
    if not all(r["peak_reset"] for r in results):
        print("note: /proc/self/clear_refs was not writable; peaks include the setup's")
    if not args.no_docs:
        body = ("Peak resident memory (RSS) of inference on one clip, batch 1, float32, `torch.inference_mode`, "
                "1 thread, random weights, each configuration in a fresh process. After a warm-up (base: 2 frames; "
                "stream: two steps of its chunk size, state thrown away) and "
                "after its input is allocated, the process's peak-RSS counter is reset (`/proc/self/clear_refs`) "
                "and the RSS recorded; *peak RSS* is `ru_maxrss` after the run (the whole process: interpreter, "
                "torch, weights), *peak − RSS before run* is what the inference itself adds. *base whole clip*: "
                "the base model on the clip as one tensor (its size in *input clip MiB*, allocated before the "
                "reset, so not in the difference). *stream*: the stream model's `stream_step` with the state "
                "carried, one frame or 8 frames per call, frames generated on the fly (no clip in memory); "
                "*stream fused*: the same through `model.fuse_for_inference()`. *peak vs shortest clip*: growth "
                "of the peak RSS against the same inference on the shortest clip. The stream peaks stay flat "
                "(the script fails if one grows by more than 1%), the base model's grow with the clip. The runs set "
                "`MALLOC_MMAP_THRESHOLD_=131072` (glibc's initial mmap threshold, made fixed) so that freed "
                "tensors leave the RSS; *glibc default* repeats each run with the default dynamic threshold "
                "(growth against the shortest clip in brackets), under which the heap's RSS wanders from step to "
                "step by a few percent with the order of allocations (up and down, measured over 64 steps of "
                "8-frame chunks: 280–313 MiB with the default, 258.0–258.3 MiB with the fixed threshold); a longer "
                "stream samples more of that wandering, so its peak can be a few percent higher without anything "
                "being kept.\n\n"
                f"{table}\n\n"
                "Stream state (`state_nbytes(model.init_state(1, H, W))`) of every stream model at its paper "
                "resolution, against the reference's count of the stream buffers alone "
                "(`../shared/reference/movinet.md` §6); our whole state adds the squeeze-excite running sums, "
                "the head's running sum and the frame count, which do not grow with the resolution.\n\n"
                f"{states}")
        write_section("benchmarks.md", "movinet-memory", "MoViNet streaming: constant memory", body,
                      f" ({(time.perf_counter() - start) / 60:.0f} min)")
    if failures:
        print("FAIL: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
