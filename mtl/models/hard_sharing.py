"""Hard parameter sharing (Caruana 1997): one shared encoder, one head per task."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from torch import Tensor, nn

from mtl.models.encoders import Encoder, last_weight_layer
from mtl.models.heads import check_task
from mtl.tasks import Task


class HardParameterSharing(nn.Module):
    """``z = encoder(x)``, then ``{task: head_task(z)}``.

    ``encoder`` and ``head`` are factories (Hydra partials): ``encoder(input_shape)`` builds the
    encoder, and ``head(in_features, out_features)`` one head per task, sized by ``task.num_outputs``.
    ``encode``/``decode`` split the forward at the shared representation ``z``, for methods that act
    on gradients with respect to ``z``; ``decode_each`` runs each head on its own tensor (the
    Jacobian engine gives each head a leaf copy of ``z``, so that one backward pass yields every
    task's gradient with respect to ``z``). ``decode`` calls ``decode_each``: a subclass that
    changes how the heads read ``z`` overrides ``decode_each``, which training uses.
    """

    def __init__(
        self,
        encoder: Callable[[Sequence[int]], Encoder],
        head: Callable[[int, int], nn.Module],
        tasks: Sequence[Task],
        input_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.encoder = encoder(input_shape)
        self.heads = nn.ModuleDict({task.name: head(self.encoder.out_features, task.num_outputs) for task in tasks})

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        return self.decode_each({name: z for name in self.heads})

    def decode_each(self, representations: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{task: head_task(representations[task])}`` for the tasks named in ``representations``."""
        return {name: self.head(name)(z) for name, z in representations.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.decode(self.encode(x))

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The encoder's last weight tensor and its bias (``last_weight_layer``)."""
        return last_weight_layer(self.encoder)

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        return self.head(name).parameters()

    def head(self, name: str) -> nn.Module:
        """The head of task ``name``, or an error naming the model's tasks."""
        check_task(self.heads, name)
        return self.heads[name]
