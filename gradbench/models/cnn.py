"""Convolutional classifier: [conv 3×3 → activation (→ max-pool)]* → flatten → [fc → activation]* → fc.

    gradbench train dataset=mnist model=cnn            # report 000's small CNN
    gradbench train dataset=mnist model=cnn_paper      # Baydin et al. 2022's CNN

Input channels and spatial size come from the data (N × C × H × W), so the same config runs
on MNIST and CIFAR-10; the first fc layer's width is worked out from them.
"""

from __future__ import annotations

from torch import nn

from gradbench.errors import choose, require
from gradbench.models import ACTIVATIONS, FLATTEN, Model


class CNN(Model):
    """Conv layers `channels[i]` (kernel `kernel_size`, stride 1, zero padding `padding`), each
    followed by the activation; a `pool`×`pool` max-pool after the conv layers numbered (from 1)
    in `pool_after`; then fully connected layers of widths `hidden` and a linear output layer.

    Defaults = report 000: conv 1→2, conv 2→4, 3×3 pad 1, ReLU, 2×2 max-pool, fc → 64, ReLU,
    fc → classes (on MNIST: fc 784 → 64). `local_losses`: each conv stage and hidden fc layer
    trains on its own linear head's loss, in `local_groups` groups of channels (Model.add_heads).
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: list[int] = (2, 4),
                 pool_after: list[int] = (2,), hidden: list[int] = (64,), kernel_size: int = 3,
                 padding: int = 1, pool: int = 2, activation: str = "relu", init: dict | None = None,
                 l2: float = 0.0, local_losses: bool = False, local_groups: int = 1) -> None:
        super().__init__(init, l2)
        act = choose("model.activation", activation, ACTIVATIONS)
        require(len(input_shape) == 3, "model", "cnn needs image inputs C × H × W (an image dataset with "
                "dataset.flatten=false and no dataset.pca_variance)", f"input shape {tuple(input_shape)}")
        require(len(channels) >= 1 and all(c >= 1 for c in channels), "model.channels",
                "must be a non-empty list of positive channel counts", list(channels))
        require(all(1 <= p <= len(channels) for p in pool_after), "model.pool_after",
                f"must list conv layer numbers in 1..{len(channels)}", list(pool_after))
        require(all(h >= 1 for h in hidden), "model.hidden", "must be a list of positive sizes", list(hidden))
        require(kernel_size >= 1 and padding >= 0 and pool >= 1, "model.kernel_size/padding/pool",
                "must be >= 1 / >= 0 / >= 1", (kernel_size, padding, pool))
        c, h, w = input_shape
        features: list[nn.Module] = []
        for i, out in enumerate(channels, start=1):
            features += [nn.Conv2d(c, out, kernel_size, padding=padding), act()]
            c, h, w = out, h + 2 * padding - kernel_size + 1, w + 2 * padding - kernel_size + 1
            if i in pool_after:
                features.append(nn.MaxPool2d(pool))
                h, w = h // pool, w // pool
            require(h >= 1 and w >= 1, "model", f"shrinks the {tuple(input_shape)} input to nothing "
                    f"at conv layer {i} (fewer pools or more padding)", (h, w))
        self.features = nn.Sequential(*features)
        sizes = [c * h * w, *hidden, num_classes]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), act()]
        self.classifier = nn.Sequential(*layers[:-1])  # no activation on the logits
        if local_losses:  # a head per conv stage (on its spatial mean) and per hidden fc layer
            self.add_heads(input_shape, num_classes, local_groups)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [*((f"features.{i}", m) for i, m in enumerate(self.features)), ("flatten", FLATTEN),
                *((f"classifier.{i}", m) for i, m in enumerate(self.classifier))]

