"""PTL: Progressive Transfer Learning for Person Re-identification (Yu et al., IJCAI 2019)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pytorch_metric_learning import losses, miners, reducers
from torch import nn
from torch.nn import functional as F

from bench.methods.base import Batch, Embed, Method, TrainData
from bench.models.bconv import BConvStream, build_ptl_model, reset_states
from bench.validation import invalid


class PTLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: width of every BConv-Cell and fuse convolution (code: 16..512, growing; kept small here)
    cell_channels: int = Field(32, ge=1)
    #: gate convolution kernel (3x3 in the authors' bconv_cell.py / mgn_ptl.py)
    cell_kernel_size: int = Field(3, ge=1)
    #: stride of the input cell reading the image (code: two stride-2 cells before layer1)
    input_stride: int = Field(2, ge=1)
    #: batch-hard triplet margin (loss.py: TripletLoss(margin=1.2))
    margin: float = Field(1.2, gt=0)
    #: loss weights (loss.py: Triplet_Loss + CrossEntropy_Loss, both 1)
    triplet_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    #: carry the BConv state from one training batch to the next (the paper's mechanism);
    #: False resets it before every forward, which is what the authors' released script
    #: effectively trained with after its first evaluation (``val`` left True)
    carry_state: bool = True

    @model_validator(mode="after")
    def _checks(self) -> PTLParams:
        if self.cell_kernel_size % 2 == 0:
            raise ValueError("cell_kernel_size: must be odd (same-size padding)")
        if self.triplet_weight == 0 and self.ce_weight == 0:
            raise ValueError("triplet_weight: triplet_weight and ce_weight are both 0 (no loss)")
        return self


class PTL(Method):
    """PTL: a parallel stream of BConv-Cells carrying a latent state across mini-batches.

    Why: a mini-batch's distribution differs from the training set's; the cells' state, carried
    from batch to batch, lets the features be corrected with information aggregated over the
    training set. Wiring and cell: see :mod:`bench.models.bconv` (cell as in the authors'
    ``bconv_cell.py``: gates = conv3x3(X) without bias -> i, f, o sigmoid, g tanh;
    C = f * stopgrad(C_prev) + i * g; H = o * tanh(C)).

    Settings and data: ``labeled`` only. dml: fine-tunes on the labeled training classes (the
    paper's setting, supervised fine-tuning of a pretrained model); uda: source-only (target
    images unused); dg: the pooled source domains (domain labels unused). Needs images and the
    backbone's stages (``needs_trunk``; ``trunk: none`` is refused, ``model.trunk``), backbones
    mobilenet_v2 / resnet18 / resnet50 (others refused, ``model.backbone``).

    Constants (params): ``cell_channels`` 32 (harness choice, small for CPU runs; the code uses
    16, 32, 64, 256, 512 then 3 x 128); ``cell_kernel_size`` 3 (code); ``input_stride`` 2
    (code); ``margin`` 1.2, ``triplet_weight`` 1, ``ce_weight`` 1 (code's loss.py ``Loss``).

    State handling: carried per batch position in training mode (a smaller batch reads the first
    rows; a larger one, or none, starts from zero); reset at every epoch start (as the code's
    ``resetalllatentstates`` per epoch); in eval mode every forward starts from zero and stores
    nothing. The authors' script sets ``val = True`` at its first evaluation and never clears it,
    so from then on every training forward reset the state: not copied (carry-over stays on by
    default); ``carry_state: false`` reproduces that behaviour (the cells then see only the
    current batch: gates over the input alone, no cross-batch information).

    Deviations from the paper / authors' code:

    * backbone: the harness's (mobilenet_v2 / resnet18 / resnet50), one global branch, instead
      of MGN (ResNet-50, three branches, part max-pooling, 8 reduced 256-d features); the paper's
      DenseNet-161 variant is not reproduced either;
    * wiring: one input cell (``input_stride``) on the normalised image, then for each backbone
      stage a cell reading fuse(cat[previous cell output average-pooled to the stage's
      resolution, stage output]) with stride-1 gates; the code instead uses two stride-2 input
      cells and strides each cell's gates to the next stage's resolution, so its last cells read
      layer3[0] and never see the last stage's output; one shared width (``cell_channels``);
      the last cell is global-AVERAGE-pooled (code: max-pooled) and concatenated with the
      backbone's pooled feature, then the protocol's EmbeddingHead (linear or MLP,
      L2-normalised) replaces the code's 1x1 conv + BN + ReLU reduction to 256-d;
    * initial state zero (code: N(0, 0.001) noise, at test time too); gate and fuse
      convolutions are Kaiming-normal (fan_in) as in the code's ``init_param``, drawn from the
      loop's seeded generator in ``setup``;
    * loss: PML TripletMarginLoss + BatchHardMiner with MeanReducer (mean over anchors, as the
      code's MarginRankingLoss) on the L2-NORMALISED embedding, where distances lie in [0, 2],
      so margin 1.2 is far stricter than on the code's unnormalised 256-d features (averaged
      over 3 global features there); cross-entropy through ONE method-owned
      Linear(embedding_size, num_classes) on the normalised embedding (code: 8 classifiers on
      the 256-d features, averaged), trained by the protocol's ``loss_optimizer``;
    * optimiser and schedule: the protocol's, as for every method (code: Adam amsgrad lr 2e-4,
      weight decay 5e-4, MultiStepLR x0.1 at epochs 320/360, 400 epochs, batches of 4 x 4);
    * teacher-student distillation (paper only, not in the code) and PTL-v2 / BConv-Cell-v2:
      not implemented;
    * test: one embedding per image, Euclidean distance; no flip averaging, no re-ranking.
    """

    requires = frozenset({"labeled"})
    optional = frozenset()
    needs_trunk = True

    @classmethod
    def validate_params(cls, params: dict[str, Any], *, source: str, field: str) -> PTLParams:
        try:
            return PTLParams.model_validate(params)
        except ValidationError as error:
            raise invalid(error, PTLParams, source=source, prefix=field) from None

    def __init__(self, params: PTLParams, *, num_classes: int, embedding_size: int) -> None:
        self.params = params
        self.embedding_size = embedding_size
        self.classifier = nn.Linear(embedding_size, num_classes)
        self.miner = miners.BatchHardMiner()
        self.triplet = losses.TripletMarginLoss(margin=params.margin,
                                                reducer=reducers.MeanReducer())

    def wrap_model(self, model: nn.Module, *, backbone: str) -> nn.Module:
        p = self.params
        return build_ptl_model(model, backbone=backbone, embedding_size=self.embedding_size,
                               channels=p.cell_channels, kernel_size=p.cell_kernel_size,
                               input_stride=p.input_stride)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def to(self, device: torch.device) -> PTL:
        self.classifier.to(device)
        return self

    def setup(self, model: nn.Module, data: TrainData, *, embed: Embed,
              generator: torch.Generator) -> None:
        """Kaiming-normal (fan_in) init of the cells, fuses and classifier, as the authors'
        ``init_param`` / ``_init_fc``, from the loop's seeded generator (drawn on the CPU so a
        CPU generator serves any device)."""
        weights = [w for m in model.modules() if isinstance(m, BConvStream)
                   for w in m.conv_weights()]
        with torch.no_grad():
            for weight in [*weights, self.classifier.weight]:
                fresh = torch.empty(weight.shape)
                nn.init.kaiming_normal_(fresh, mode="fan_in", generator=generator)
                weight.copy_(fresh)
            self.classifier.bias.zero_()
        reset_states(model)

    def on_epoch(self, epoch: int, model: nn.Module, data: TrainData, *, embed: Embed) -> None:
        reset_states(model)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if not self.params.carry_state:
            reset_states(model)
        embeddings = model(batch.source)
        labels = batch.labels
        p = self.params
        total = embeddings.new_zeros(())
        if p.triplet_weight:
            pairs = self.miner(embeddings, labels)
            total = total + p.triplet_weight * self.triplet(embeddings, labels, pairs)
        if p.ce_weight:
            total = total + p.ce_weight * F.cross_entropy(self.classifier(embeddings), labels)
        return total
