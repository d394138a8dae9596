"""ECN: exemplar memory with exemplar, camera and neighbourhood invariance (Zhong et al., CVPR 2019)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn import functional as F
from torchvision.transforms.v2 import functional as TF

from bench.methods.base import Batch, Embed, Method, TrainData
from bench.validation import invalid


class EcnParams(BaseModel):
    """ECN's constants; see :class:`ECN` for where each comes from."""

    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.05, gt=0)
    alpha_step: float = Field(0.01, ge=0, lt=1)
    alpha_max: float = Field(0.59, ge=0, lt=1)
    k: int = Field(6, ge=1)
    neighbour_start_epoch: int = Field(5, ge=0)
    lam: float = Field(0.3, ge=0, le=1)
    camera_prob: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = "auto"
    classifier_init_std: float = Field(0.001, gt=0)
    fallback_prob: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.4, ge=0, lt=1)
    contrast: float = Field(0.4, ge=0, lt=1)
    grayscale_prob: float = Field(0.2, ge=0, le=1)
    feature_noise: float = Field(0.2, ge=0)


class ECN(Method):
    """ECN (Zhong et al., CVPR 2019, "Invariance Matters"; authors' code zhunzhong07/ECN).

    Setting: ``uda`` only. Consumes ``labeled`` source images (classifier cross-entropy),
    ``unlabeled_target`` images (exemplar memory, one slot per target training row) and, when
    the dataset has them, ``camera_views`` (the camera-invariance views). Works on cached
    features or images (``needs_trunk`` False).

    Loss: ``(1 - lam) * CE(classifier(f_s), y) + lam * L_target`` with ``f_t = model(x_t)``,
    ``z = f_t @ M.T / beta`` and ``L_target = CE(z, i)`` (exemplar + camera invariance, the input
    having been swapped for the same image as another camera sees it) before
    ``neighbour_start_epoch``, then ``-sum_j w_j log softmax(z)_j`` with ``w = 1`` on the own
    slot and ``1/k`` on the ``k`` most similar other slots; both averaged over the batch, as in
    the authors' ``InvNet`` (``F.cross_entropy`` / ``loss.sum(1).mean(0)``). After the step,
    without gradient: ``M[i] <- alpha*M[i] + (1-alpha)*f_t``, ``M[i] /= ||M[i]||``.

    Constants (paper Sec. 4.1 and the authors' ``main.py`` / ``reid/loss/invariance.py``):
    ``beta`` = 0.05 (temperature), ``alpha_step`` = 0.01 (alpha = 0.01 x epoch, so 0 in epoch
    0), ``k`` = 6, ``neighbour_start_epoch`` = 5 (code: ``epoch > 4``), ``lam`` = 0.3,
    ``classifier_init_std`` = 0.001 (code: source classifier weights N(0, 0.001), bias 0).
    ``camera_prob`` = ``auto``: the authors' ``UnsupervisedCamStylePreprocessor`` draws a camera
    uniformly among all cameras and keeps the real image when it draws the image's own camera,
    so with ``C`` target cameras a row is swapped with probability ``(C - 1) / C`` (5/6 on
    Market's 6 cameras) for a view rendered as one of the other ``C - 1`` cameras, drawn
    uniformly; a number in [0, 1] overrides it for every row.

    ``lam`` = 0 is ECN's own source-only ablation (the source classifier alone: no target
    forward, loss or memory update).

    Harness constants (not in the paper): ``alpha_max`` = 0.59 caps alpha at the largest value
    of the authors' 60-epoch schedule (0.01 x 59), since harness runs can have more epochs and
    alpha >= 1 would freeze or invert the memory. Photometric fallback (no ``camera_views``):
    ``fallback_prob`` = 0.5 per row (``camera_prob`` when a number), ``brightness`` = 0.4,
    ``contrast`` = 0.4, ``grayscale_prob`` = 0.2 (MoCo v2's colour-jitter strengths) on images;
    ``feature_noise`` = 0.2 (Gaussian noise of 0.2 x the row's RMS) on cached features.

    Deviations from the paper / authors' code:

    * camera invariance uses label-free views of THE SAME image (``camera_views``,
      :mod:`bench.data.camera_style`: the dataset's imaging condition of another camera
      re-applied to the row's picture, or the row's colours moved to another target camera's
      mean/std measured on unlabeled target images), not StarGAN-made CamStyle images; never
      another image of the same identity. Without views (cached features, one target camera)
      it falls back to a photometric view (colour jitter + grayscale on images, Gaussian
      feature noise on cached features), which is augmentation invariance, not camera
      invariance;
    * target head = the protocol's embedding head (the paper: FC-4096 + BN, L2-normalised, and
      dropout 0.5 after the normalisation in the code); no dropout here;
    * the source classifier is a method-owned ``Linear(embedding_size, num_classes)`` over the
      L2-normalised embedding, trained by the protocol's ``loss_optimizer`` (the paper branches
      it from pool5; the code reads the FC-4096 + BN output through ReLU and dropout), so
      source labels shape the representation even with a frozen trunk;
    * test feature = the embedding (paper / code: the L2-normalised pool5 feature);
    * neighbours exclude the own slot, so there are always ``k`` of them (the code takes the
      top-k over all slots, usually including the own one, whose weight is then reset to 1:
      mostly ``k - 1`` neighbours); ``k`` is clamped to ``N_target - 1``;
    * alpha is capped at ``alpha_max`` (see above); the code's memory is a ``Parameter``
      updated inside ``backward`` (same values: the loss reads the memory before the update);
    * optimiser, schedule, sampler (P x K source batches, uniform target draws) and batch size
      come from the protocol, not the paper's SGD 0.1/0.01, 60 epochs, batch 128 + 128; the
      code's frozen conv1-layer2 and fixed early BN are not reproduced.

    Repeated target index in a batch: updated sequentially in batch order, as in the authors'
    loop (the second occurrence moves the slot already moved by the first).
    """

    requires = frozenset({"labeled", "unlabeled_target"})
    optional = frozenset({"camera_views"})
    needs_trunk = False

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> EcnParams:
        try:
            parsed = EcnParams.model_validate(params)
        except ValidationError as error:
            raise invalid(error, EcnParams, source=source, prefix=field) from None
        return parsed

    def __init__(self, params: EcnParams, *, num_classes: int, embedding_size: int) -> None:
        self.p = params
        self.embedding_size = embedding_size
        # skip_init: no draw from the global RNG; setup() draws the weights from the seeded
        # generator, zeros until then.
        self.classifier = nn.utils.skip_init(nn.Linear, embedding_size, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.device = torch.device("cpu")
        self.memory = torch.zeros(0, embedding_size)
        self.view_prob: torch.Tensor | None = None  # per target row, with camera_views
        self.rng = torch.Generator()
        self._pending: tuple[torch.Tensor, torch.Tensor, int] | None = None  # for after_step

    def parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def to(self, device: torch.device) -> ECN:
        self.device = torch.device(device)
        self.classifier.to(self.device)
        self.memory = self.memory.to(self.device)
        if self.view_prob is not None:
            self.view_prob = self.view_prob.to(self.device)
        return self

    def setup(self, model: nn.Module, data: TrainData, *, embed: Embed,
              generator: torch.Generator) -> None:
        """Zero memory (one slot per target row), seeded classifier init and swap generator."""
        nn.init.normal_(self.classifier.weight, std=self.p.classifier_init_std,
                        generator=generator)
        nn.init.zeros_(self.classifier.bias)
        self.rng = torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,), generator=generator)))
        self.memory = torch.zeros(len(data.target), self.embedding_size, device=self.device)
        self.view_prob = None
        if data.camera_views is not None:
            if self.p.camera_prob == "auto":  # C target cameras: C - 1 other-camera views
                others = data.camera_views.num_cameras - 1
                prob = np.full(len(data.target), others / (others + 1), dtype=np.float32)
            else:
                prob = np.full(len(data.target), self.p.camera_prob, dtype=np.float32)
            self.view_prob = torch.as_tensor(prob, device=self.device)

    def alpha(self, epoch: int) -> float:
        """Memory momentum: linear in the epoch (authors' code), capped at ``alpha_max``."""
        return min(self.p.alpha_step * epoch, self.p.alpha_max)

    # -- camera invariance -----------------------------------------------------------------
    def _fallback_view(self, inputs: torch.Tensor) -> torch.Tensor:
        """Photometric view when no camera views exist: jitter images or noise features."""
        n = len(inputs)
        if inputs.dtype == torch.uint8 and inputs.dim() == 4:  # NHWC images
            b = 1 + (2 * torch.rand(n, generator=self.rng) - 1) * self.p.brightness
            c = 1 + (2 * torch.rand(n, generator=self.rng) - 1) * self.p.contrast
            gray = torch.rand(n, generator=self.rng) < self.p.grayscale_prob
            images = inputs.permute(0, 3, 1, 2)
            out = []
            for i in range(n):  # torchvision's adjust_* take one factor per call
                image = TF.adjust_contrast(TF.adjust_brightness(images[i], float(b[i])),
                                           float(c[i]))
                if gray[i]:
                    image = TF.rgb_to_grayscale(image, num_output_channels=3)
                out.append(image)
            return torch.stack(out).permute(0, 2, 3, 1).contiguous()
        noise = torch.randn(inputs.shape, generator=self.rng).to(inputs.device, inputs.dtype)
        scale = inputs.pow(2).flatten(1).mean(1).sqrt().view(-1, *[1] * (inputs.dim() - 1))
        return inputs + self.p.feature_noise * scale * noise

    def target_inputs(self, batch: Batch) -> torch.Tensor:
        """Each target row, swapped (same index) for another camera's view with its probability."""
        inputs = batch.target
        n = len(inputs)
        draw = torch.rand(n, generator=self.rng)
        if batch.target_views is not None and self.view_prob is not None:
            swap = draw.to(inputs.device) < self.view_prob[batch.target_index]
            views = batch.target_views
        else:
            prob = self.p.camera_prob if self.p.camera_prob != "auto" else self.p.fallback_prob
            chosen = torch.nonzero(draw < prob).squeeze(1)  # on the CPU: no device sync
            if len(chosen) == 0:
                return inputs
            chosen = chosen.to(inputs.device)
            views = inputs.clone()
            views[chosen] = self._fallback_view(inputs[chosen])
            return views
        return torch.where(swap.view(-1, *[1] * (inputs.dim() - 1)), views, inputs)

    # -- losses ----------------------------------------------------------------------------
    def target_loss(self, features: torch.Tensor, index: torch.Tensor,
                    epoch: int) -> torch.Tensor:
        """Exemplar(+camera) CE on the memory logits; soft neighbour targets from the set epoch."""
        logits = features @ self.memory.T / self.p.beta
        if epoch < self.p.neighbour_start_epoch:
            return F.cross_entropy(logits, index)
        k = min(self.p.k, len(self.memory) - 1)
        with torch.no_grad():
            ranked = logits.detach().clone()
            ranked.scatter_(1, index[:, None], float("-inf"))  # the own slot is not a neighbour
            neighbours = ranked.topk(k, dim=1).indices
            weights = torch.zeros_like(logits)
            weights.scatter_(1, neighbours, 1.0 / k)
            weights.scatter_(1, index[:, None], 1.0)
        return -(weights * F.log_softmax(logits, dim=1)).sum(1).mean()

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        if batch.source is not None:
            logits = self.classifier(model(batch.source))
            total = total + (1 - self.p.lam) * F.cross_entropy(logits, batch.labels)
        if batch.target is not None and self.p.lam > 0:  # lam = 0: the source-only ablation
            features = model(self.target_inputs(batch))
            total = total + self.p.lam * self.target_loss(features, batch.target_index,
                                                          batch.epoch)
            self._pending = (features.detach(), batch.target_index, batch.epoch)
        return total

    def after_step(self, batch: Batch) -> None:
        """Move each slot towards its new feature, sequentially for repeated indices."""
        if self._pending is None:
            return
        features, index, epoch = self._pending
        self._pending = None
        alpha = self.alpha(epoch)
        # Occurrence rank of each position among equal indices: round r updates every r-th
        # occurrence at once, which equals the authors' one-by-one loop (no library op for it).
        order = torch.sort(index, stable=True).indices
        _, counts = torch.unique_consecutive(index[order], return_counts=True)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        rank = torch.empty_like(index)
        rank[order] = torch.arange(len(index), device=index.device) - starts
        for r in range(int(counts.max())):
            rows = index[rank == r]
            updated = alpha * self.memory[rows] + (1 - alpha) * features[rank == r]
            self.memory[rows] = F.normalize(updated, dim=1)
