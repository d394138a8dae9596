"""PTL's Batch-related Convolutional Cell (BConv-Cell) and the parallel stream of cells.

A BConv-Cell is a convolutional LSTM-like cell whose "time" axis is the sequence of training
mini-batches: its latent state C is carried from one mini-batch to the next (per batch position)
so the stream can aggregate information about the whole training set (Yu et al., IJCAI 2019).
No library offers such a cell (torch's recurrent cells are fully connected and carry their state
along a sequence inside one batch), hence the hand-written module.

The stream runs beside an unchanged backbone split into stages; :class:`PTLModel` wires both and
ends in a new embedding head over [backbone pooled feature, pooled last-cell output].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import BenchError
from bench.models.batchnorm import FrozenBatchNorm
from bench.models.heads import EmbeddingHead, EmbeddingModel

#: backbones whose stages the stream knows how to read
STAGED_BACKBONES = ("mobilenet_v2", "resnet18", "resnet50")
#: side of the blank image used once to learn the stages' widths and resolutions
_PROBE_SIZE = 64


class BConvCell(nn.Module):
    """gates = conv(X) (no bias) -> i, f, o, g; C = f * C_prev + i * g; H = o * tanh(C).

    ``C_prev`` is the state left by the previous training forward (detached, so gradients never
    cross mini-batches). It is zero when there is none, when the batch is larger than the stored
    one or the spatial size changed; a smaller batch reads the first rows. In eval mode every
    forward starts from zero and stores nothing, so a test feature never depends on other test
    images, and evaluation between training steps leaves the training state untouched.
    """

    state: torch.Tensor | None

    def __init__(self, in_channels: int, channels: int, *, kernel_size: int = 3,
                 stride: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.gates = nn.Conv2d(in_channels, 4 * channels, kernel_size, stride=stride,
                               padding=kernel_size // 2, bias=False)
        # Not persistent: the carried state is not a weight and stays out of state_dict
        # (so out of the training loop's best-state snapshots); as a buffer it follows .to().
        self.register_buffer("state", None, persistent=False)

    def reset_state(self) -> None:
        self.state = None

    def previous_state(self, like: torch.Tensor) -> torch.Tensor:
        """The state this forward starts from, shaped like the gates' per-gate output."""
        state = self.state
        if (not self.training or state is None or state.shape[1:] != like.shape[1:]
                or state.shape[0] < like.shape[0]):
            return torch.zeros_like(like)
        return state[:like.shape[0]].to(like.dtype)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        i, f, o, g = self.gates(inputs).chunk(4, dim=1)
        cell = torch.sigmoid(f) * self.previous_state(g).detach() \
            + torch.sigmoid(i) * torch.tanh(g)
        if self.training:
            self.state = cell.detach()
        return torch.sigmoid(o) * torch.tanh(cell)


def match_size(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bring a feature map to a stage's spatial size: average-pool down (exact k x k means for
    the backbones' factor-2 steps), nearest-upsample in the (unused here) other case."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=tuple(size), mode="nearest")


class BConvStream(nn.Module):
    """An input cell on the image, then per stage: fuse(cat[previous cell, stage]) -> cell.

    ``fuse`` is 1x1 conv + BatchNorm + ReLU as in the authors' code; the previous cell's output
    is average-pooled to the stage's resolution (:func:`match_size`). ``forward`` returns the
    global-average-pooled output of the last cell.
    """

    def __init__(self, stage_channels: Sequence[int], channels: int, *, kernel_size: int = 3,
                 input_stride: int = 2, image_channels: int = 3) -> None:
        super().__init__()
        self.input_cell = BConvCell(image_channels, channels, kernel_size=kernel_size,
                                    stride=input_stride)
        self.fuses = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels + c, channels, 1, bias=True),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for c in stage_channels
        )
        self.cells = nn.ModuleList(BConvCell(channels, channels, kernel_size=kernel_size)
                                   for _ in stage_channels)

    def forward(self, image: torch.Tensor, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        h = self.input_cell(image)
        for fuse, cell, x in zip(self.fuses, self.cells, stages, strict=True):
            h = cell(fuse(torch.cat([match_size(h, x.shape[-2:]), x], dim=1)))
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def all_cells(self) -> list[BConvCell]:
        return [m for m in self.modules() if isinstance(m, BConvCell)]

    def conv_weights(self) -> list[torch.Tensor]:
        """Weights of the gate and fuse convolutions (re-initialised by the method, seeded)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Conv2d)]


def reset_states(model: nn.Module) -> None:
    """Forget every carried BConv state in ``model`` (epoch starts)."""
    for module in model.modules():
        if isinstance(module, BConvCell):
            module.reset_state()


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for a probe (no running-statistics update); ``train(was)`` afterwards lets a
    :class:`FrozenBatchNorm` put its frozen layers back in eval mode itself."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def _probe(stages: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Size]:
    shapes = []
    for stage in stages:
        x = stage(x)
        shapes.append(x.shape)
    return shapes


def split_stages(network: nn.Module, backbone: str) -> list[nn.Module]:
    """The backbone network as a list of stages whose sequential run is its own forward up to
    global pooling (shared modules, nothing copied).

    mobilenet_v2: the ``features`` blocks grouped by output resolution (/2, /4, /8, /16, /32);
    resnet18/50: stem + layer1, layer2, layer3, layer4. ``network`` may be a FrozenBatchNorm.
    """
    inner = network.network if isinstance(network, FrozenBatchNorm) else network
    if backbone not in STAGED_BACKBONES:
        raise BenchError(f"PTL cannot split backbone {backbone!r} into stages (supported: "
                         f"{', '.join(STAGED_BACKBONES)})", field="model.backbone")
    if backbone.startswith("resnet"):
        stem = nn.Sequential(inner.conv1, inner.bn1, inner.relu, inner.maxpool, inner.layer1)
        return [stem, inner.layer2, inner.layer3, inner.layer4]
    blocks = list(inner[0])
    with torch.no_grad(), _eval_mode(network):
        shapes = _probe(blocks, _blank(inner))
    stages: list[list[nn.Module]] = []
    for block, shape, previous in zip(blocks, shapes, [None, *shapes[:-1]], strict=True):
        if previous is None or shape[-2:] != previous[-2:]:
            stages.append([])
        stages[-1].append(block)
    return [nn.Sequential(*group) for group in stages]


def _blank(network: nn.Module) -> torch.Tensor:
    device = next(network.parameters()).device
    return torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE, device=device)


class PTLModel(EmbeddingModel):
    """Backbone stages + BConv stream; head over [backbone pooled feature, pooled last cell].

    ``trunk`` is the harness's ``Sequential(CenterCrop, Normalize, network)`` kept whole (so a
    FrozenBatchNorm network keeps its behaviour under ``train()``); the stages are references
    into it, held outside the module tree so no weight is registered twice.
    """

    def __init__(self, trunk: nn.Sequential, stages: Sequence[nn.Module], stream: BConvStream,
                 head: EmbeddingHead) -> None:
        super().__init__(head, trunk)
        self.stream = stream
        self._preprocess = tuple(list(trunk)[:-1])
        self._stages = tuple(stages)

    def features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone pooled feature, pooled last-cell output) of uint8 NHWC images."""
        x = inputs
        for module in self._preprocess:
            x = module(x)
        outputs = []
        h = x
        for stage in self._stages:
            h = stage(h)
            outputs.append(h)
        pooled = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return pooled, self.stream(x, outputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(self.features(inputs), dim=1))


def _hidden_size(head: nn.Module) -> int:
    net = getattr(head, "net", None)
    return net[0].out_features if isinstance(net, nn.Sequential) else 0


def build_ptl_model(model: EmbeddingModel, *, backbone: str, embedding_size: int,
                    channels: int, kernel_size: int = 3, input_stride: int = 2) -> PTLModel:
    """Wrap a harness model: stages of its backbone, a stream of ``channels``-wide cells and a
    new head (same hidden size as the old one) over feature + ``channels`` inputs."""
    if model.trunk is None:
        raise BenchError("PTL needs images and the backbone's stages; cached pooled features "
                         "(trunk: none) cannot feed its cells", field="model.trunk")
    network = list(model.trunk)[-1]
    stages = split_stages(network, backbone)
    with torch.no_grad(), _eval_mode(network):
        shapes = _probe(stages, _blank(network))
    stream = BConvStream([s[1] for s in shapes], channels, kernel_size=kernel_size,
                         input_stride=input_stride)
    head = EmbeddingHead(shapes[-1][1] + channels, embedding_size, _hidden_size(model.head))
    device = next(network.parameters()).device
    return PTLModel(model.trunk, stages, stream.to(device), head.to(device))
