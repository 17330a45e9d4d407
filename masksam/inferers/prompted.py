# Copyright (c) MaskSAM contributors. Licensed under the Apache License, Version 2.0.
"""Prompt-driven volume inference: encode a volume once, answer each prompt with the decoder only.

:class:`PromptedVolumePredictor` is the interactive API (as ``segment_anything``'s ``SamPredictor``, for
volumes): :meth:`~PromptedVolumePredictor.set_volume` runs the image encoder over the volume's stacks of
``num_slices`` slices once; :meth:`~PromptedVolumePredictor.predict` decodes the prompted slices, and with
``refine=True`` feeds each slice's previous logits back as SAM's dense prompt, so a new click corrects the
last mask. :class:`PromptedInferer` is the same computation as a MONAI ``Inferer`` for bundle configs.

The network is a prompted slice-stack network with ``encode(x (B, C, S, S, T)) -> (B*T, C', h, w)``,
``decode(embeddings, coords (N, P, 2), labels (N, P), mask_inputs) -> (N, 1, 4h, 4w)``, ``num_slices`` T and
``image_size`` S (:class:`masksam.networks.MedSA`). Prompts use the per-slice format of
:mod:`masksam.networks.med_sa` in the voxel grid of the ``(C, S, S, D)`` volume.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import nn
from tqdm import tqdm

__all__ = ["IterativeClickInferer", "PromptedInferer", "PromptedVolumePredictor"]


def _pad_slices(x: torch.Tensor, num_slices: int) -> torch.Tensor:
    """``(..., D)`` -> ``(..., ceil(D / T) * T)`` by repeating the last slice."""
    extra = -x.shape[-1] % num_slices
    return torch.cat([x, x[..., -1:].expand(*x.shape[:-1], extra)], dim=-1) if extra else x


class PromptedVolumePredictor:
    """Interactive segmentation of one volume: the encoder runs once per volume, the decoder once per prompt.

    Args:
        network: a prompted slice-stack network (module docstring), e.g. :class:`masksam.networks.MedSA`.
        device: where the network runs (default: where its parameters are).
        sw_batch_size: stacks of ``num_slices`` slices per encoder call (memory bound).
        progress: show a progress bar while encoding.
    """

    def __init__(
        self,
        network: nn.Module,
        device: str | torch.device | None = None,
        sw_batch_size: int = 1,
        progress: bool = False,
    ) -> None:
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.network = network
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.sw_batch_size = sw_batch_size
        self.progress = progress
        self.embeddings: torch.Tensor | None = None
        self.low_res: torch.Tensor | None = None
        self.decoded: torch.Tensor | None = None
        self.depth = 0

    @torch.no_grad()
    def set_volume(self, image: torch.Tensor) -> None:
        """Encode ``image (C, S, S, D)`` (intensities in [0, 1], the network's model space); forget previous masks.

        The slice axis is cut into stacks of ``num_slices`` (the last one completed by repeating the last slice).
        """
        net = self.network
        if image.ndim != 4 or image.shape[1] != net.image_size or image.shape[2] != net.image_size:
            raise ValueError(
                f"expected a (C, {net.image_size}, {net.image_size}, D) volume in the network's model space, got "
                f"{tuple(image.shape)}"
            )
        t = net.num_slices
        padded = _pad_slices(image.to(self.device), t)
        stacks = padded.reshape(*padded.shape[:-1], -1, t).permute(3, 0, 1, 2, 4)  # (n, C, S, S, T)
        batches = range(0, stacks.shape[0], self.sw_batch_size)
        if self.progress:
            batches = tqdm(batches, desc="encoding stacks", unit="batch")
        self.embeddings = torch.cat([net.encode(stacks[i : i + self.sw_batch_size]) for i in batches])
        self.depth = image.shape[-1]
        self.low_res = self.decoded = None

    @torch.no_grad()
    def predict(self, prompt_coords: torch.Tensor, prompt_labels: torch.Tensor, refine: bool = False) -> torch.Tensor:
        """Segment the structure the prompts point at, with the decoder only.

        Args:
            prompt_coords: ``(D, P, 2)`` per-slice ``(i, j)`` voxel coordinates.
            prompt_labels: ``(D, P)`` per-slice labels (1 / 0 clicks, 2 / 3 box corners, -1 padding).
            refine: give each prompted slice that already has a mask its previous logits as the dense prompt (a new
                click corrects the last mask) and keep the masks of slices not prompted now; otherwise start afresh.

        Returns:
            ``(1, S, S, D)`` mask logits (very negative on slices without a prompt).
        """
        if self.embeddings is None:
            raise RuntimeError("call set_volume(image) before predict(...)")
        if prompt_coords.shape[:1] != (self.depth,) or prompt_labels.shape != prompt_coords.shape[:2]:
            raise ValueError(
                f"prompts for a volume of {self.depth} slices must be (D, P, 2) coords and (D, P) labels, got "
                f"{tuple(prompt_coords.shape)} and {tuple(prompt_labels.shape)}"
            )
        n = self.embeddings.shape[0]
        coords = F.pad(prompt_coords.to(self.device).float(), (0, 0, 0, 0, 0, n - self.depth))
        labels = F.pad(prompt_labels.to(self.device), (0, 0, 0, n - self.depth), value=-1)
        prompted = (labels >= 0).any(dim=1)
        net = self.network
        if refine and self.low_res is not None:
            again = prompted & self.decoded  # slices with a previous mask: it becomes the dense prompt
            fresh = net.decode(self.embeddings, coords, _only(labels, prompted & ~again))
            refined = net.decode(self.embeddings, coords, _only(labels, again), mask_inputs=self.low_res)
            low = torch.where(again[:, None, None, None], refined, fresh)
            self.low_res = torch.where(prompted[:, None, None, None], low, self.low_res)  # the others keep theirs
            self.decoded = self.decoded | prompted
        else:
            self.low_res, self.decoded = net.decode(self.embeddings, coords, labels), prompted
        s = net.image_size
        logits = F.interpolate(self.low_res, size=(s, s), mode="bilinear", align_corners=False)
        return logits[: self.depth, 0].permute(1, 2, 0)[None]


def _only(labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``labels (N, P)`` with every row not in the boolean ``rows (N,)`` made padding (not decoded)."""
    return torch.where(rows[:, None], labels, torch.full_like(labels, -1))


class PromptedInferer(Inferer):
    """MONAI ``Inferer`` running :class:`PromptedVolumePredictor` on each volume of a batch, for one or several
    structures per volume (the encoder runs once per volume).

    ``inferer(inputs, network, prompt_coords=..., prompt_labels=...)`` with ``inputs (B, C, S, S, D)``:

    - one structure: ``prompt_coords (B, D, P, 2)``, ``prompt_labels (B, D, P)`` -> ``(B, 1, S, S, D)`` logits;
    - ``M`` structures: ``prompt_coords (B, M, D, P, 2)``, ``prompt_labels (B, M, D, P)`` -> ``(B, M, S, S, D)``
      logits, channel ``m`` the structure of prompt set ``m``.

    With ``background_logit`` set, a constant channel of that value comes first: the argmax over channels is then
    a label map (structure ``m`` where its logit is above ``background_logit`` and the largest; 0 elsewhere), so
    the output feeds the same post-processing, metrics and ensembling as a semantic network's class scores.
    In an ignite engine, ``monai.engines.PrepareBatchExtraInput`` passes the prompt keys of the batch.

    Args:
        sw_batch_size: stacks per encoder call.
        sw_device: device the network runs on (default: the network's).
        device: device of the output (default: the input's).
        background_logit: value of a leading background channel (None: no such channel).
        progress: progress bar while encoding.
    """

    def __init__(
        self,
        sw_batch_size: int = 1,
        sw_device: str | torch.device | None = None,
        device: str | torch.device | None = None,
        background_logit: float | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.sw_batch_size = sw_batch_size
        self.sw_device = sw_device
        self.device = device
        self.background_logit = background_logit
        self.progress = progress

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        prompt_coords: torch.Tensor,
        prompt_labels: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if prompt_coords.ndim == 4:  # one structure per volume
            prompt_coords, prompt_labels = prompt_coords[:, None], prompt_labels[:, None]
        b, d = inputs.shape[0], inputs.shape[-1]
        if prompt_coords.ndim != 5 or prompt_coords.shape[:1] != (b,) or prompt_coords.shape[2] != d:
            raise ValueError(
                f"prompts for {b} volumes of {d} slices must be (B, [M,] D, P, 2) coords, got {tuple(prompt_coords.shape)}"
            )
        net = getattr(network, "module", network)  # DDP
        predictor = PromptedVolumePredictor(net, self.sw_device, self.sw_batch_size, self.progress)
        outputs = []
        for i in range(b):
            predictor.set_volume(inputs[i])
            channels = [predictor.predict(xy, lab) for xy, lab in zip(prompt_coords[i], prompt_labels[i], strict=True)]
            if self.background_logit is not None:
                channels.insert(0, torch.full_like(channels[0], self.background_logit))
            outputs.append(torch.cat(channels))
        out = torch.stack(outputs)
        return out.to(self.device if self.device is not None else inputs.device)


class IterativeClickInferer(Inferer):
    """Training with simulated corrections (SAM's and Med-SA's iterative clicks): predict, click the larger error
    region of every slice (:func:`masksam.transforms.error_region_clicks`), predict again with the new click and
    the previous mask as dense prompt, ``correction_clicks`` times; only the last prediction keeps its graph.

    ``inferer(inputs, network, prompt_coords, prompt_labels, target)``: ``inputs (B, C, S, S, D)``, per-slice prompts
    ``(B, D, P, 2)``/``(B, D, P)``, binary ``target (B, 1, S, S, D)``; returns the last ``(B, 1, S, S, D)`` logits.
    ``network(x, prompt_coords, prompt_labels, mask_inputs)`` is called directly (so DDP synchronises), the previous
    logits resized to the size of the network's dense prompt (``prompt_encoder.mask_input_size``) as ``mask_inputs``.
    With ``correction_clicks=0`` it is ``network(x, prompt_coords, prompt_labels)``.

    Args:
        correction_clicks: rounds of error-region clicks before the final prediction.
        mode: ``"random"`` (a random voxel of the error region) or ``"center"`` (the one farthest from its border).
        seed: seed of the click sampling.
    """

    def __init__(self, correction_clicks: int = 1, mode: str = "random", seed: int = 0) -> None:
        super().__init__()
        if correction_clicks < 0:
            raise ValueError(f"correction_clicks must be >= 0, got {correction_clicks}")
        self.correction_clicks = correction_clicks
        self.mode = mode
        self.rng = np.random.RandomState(seed)

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: nn.Module,
        prompt_coords: torch.Tensor,
        prompt_labels: torch.Tensor,
        target: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        from masksam.transforms.prompt_simulation import error_region_clicks

        if self.correction_clicks and target is None:
            raise ValueError("IterativeClickInferer needs the target to simulate correction clicks")
        mask_inputs = None
        for _ in range(self.correction_clicks):
            with torch.no_grad():
                logits = network(inputs, prompt_coords, prompt_labels, mask_inputs)
            new_coords, new_labels = error_region_clicks(
                (logits[:, 0] > 0).cpu(), (target[:, 0] > 0.5).cpu(), mode=self.mode, rng=self.rng
            )
            prompt_coords = torch.cat([prompt_coords, new_coords.to(prompt_coords)], dim=-2)
            prompt_labels = torch.cat([prompt_labels, new_labels.to(prompt_labels)], dim=-1)
            size = getattr(network, "module", network).prompt_encoder.mask_input_size  # SAM's dense-prompt size
            low = F.interpolate(
                logits.permute(0, 4, 1, 2, 3).flatten(0, 1), size=size, mode="bilinear", align_corners=False
            )
            mask_inputs = low.reshape(*logits.shape[:1], logits.shape[-1], *low.shape[1:]).detach()
        return network(inputs, prompt_coords, prompt_labels, mask_inputs)
