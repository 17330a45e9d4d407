# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Med-SA's interactive latency: the first prompt of a volume (encoder + decoder) against each further prompt.

Random weights (timing does not depend on their values), ``build_med_sa(backbone, image_size=S,
num_slices=T)`` (ViT-B, one 9-slice 512x512 stack by default), ``torch.no_grad``, through
:class:`masksam.inferers.PromptedVolumePredictor`:

- ``first``: ``set_volume`` (the encoder over the stack, Space-Depth Transpose included) plus ``predict`` with a
  box on every slice: what a user waits for after opening a volume;
- ``next``: ``predict`` with another box on every slice (the decoder only);
- ``refine``: ``predict(..., refine=True)`` with one click on every slice (the decoder with the previous mask as
  dense prompt).

``--rounds`` rounds, each a fresh ``set_volume``; medians and the ratios next / first and refine / first
(issue target: at most 5 %). Full size takes about 2 minutes per round on 2 idle CPU cores.

    python benchmarks/med_sa.py                                     # vit_b, 512x512, 9 slices
    python benchmarks/med_sa.py --backbone tiny --size 64 --slices 4 --rounds 1   # seconds (the smoke test)
    python benchmarks/med_sa.py --device cuda --dtype bf16 --backbone vit_h
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
from common import begin_benchmark, ct_like_volume, print_result, timed

from masksam.inferers import PromptedVolumePredictor
from masksam.networks import build_med_sa


def _boxes(label: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One box per slice around the label's structure 1 (the whole slice where it is absent), shifted by ``shift``."""
    h, w, d = label.shape
    coords = torch.zeros(d, 2, 2)
    for z in range(d):
        ii, jj = torch.nonzero(label[..., z] == 1, as_tuple=True)
        box = [ii.min(), jj.min(), ii.max(), jj.max()] if len(ii) else [0, 0, h - 1, w - 1]
        coords[z] = (torch.tensor(box, dtype=torch.float32) + shift).clamp(0, h - 1).reshape(2, 2)
    return coords, torch.tensor([[2, 3]]).expand(d, 2)


def _clicks(label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One background click per slice, in a corner."""
    d = label.shape[-1]
    return torch.full((d, 1, 2), 2.0), torch.zeros(d, 1, dtype=torch.long)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_b")
    parser.add_argument("--size", type=int, default=512, help="in-plane size S")
    parser.add_argument("--slices", type=int, default=9, help="slices of the stack (the network's num_slices)")
    parser.add_argument("--rounds", type=int, default=2)
    started = begin_benchmark(parser)
    if started is None:
        return
    args, device, dtype, info = started
    torch.manual_seed(0)
    net = build_med_sa(args.backbone, image_size=args.size, num_slices=args.slices).to(device).eval()
    image, label = ct_like_volume((args.size, args.size, args.slices), num_classes=4)
    volume, label = image[0].to(device), label[0, 0]
    boxes, other = _boxes(label, 0), _boxes(label, 3)
    clicks = _clicks(label)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    runs: dict[str, list[float]] = {"first": [], "next": [], "refine": []}
    predictor = PromptedVolumePredictor(net, device)
    with torch.no_grad(), autocast:
        for r in range(args.rounds + 1):  # round 0 warms up
            times = {
                "first": timed(lambda: (predictor.set_volume(volume), predictor.predict(*boxes)), device),
                "next": timed(lambda: predictor.predict(*other), device),
                "refine": timed(lambda: predictor.predict(*clicks, refine=True), device),
            }
            if r:
                for name, t in times.items():
                    runs[name].append(t)
                print(f"# round {r}: " + ", ".join(f"{k} {v:.3f}s" for k, v in times.items()), flush=True)
    medians = {name: statistics.median(r) for name, r in runs.items()}
    result = {
        "config": {"backbone": args.backbone, "size": args.size, "slices": args.slices, "dtype": str(dtype)},
        "machine": info,
        "time_s": {k: round(v, 6) for k, v in medians.items()},
        "runs_s": {k: [round(t, 6) for t in v] for k, v in runs.items()},
        "ratio_next_vs_first": round(medians["next"] / medians["first"], 4),
        "ratio_refine_vs_first": round(medians["refine"] / medians["first"], 4),
    }
    print(
        f"first prompt (encoder + decoder) {medians['first']:.2f}s; next prompt {medians['next']:.3f}s = "
        f"{100 * result['ratio_next_vs_first']:.1f}% of it; refining click {medians['refine']:.3f}s = "
        f"{100 * result['ratio_refine_vs_first']:.1f}% (target: at most 5%)"
    )
    print_result("med_sa", result)


if __name__ == "__main__":
    main()
