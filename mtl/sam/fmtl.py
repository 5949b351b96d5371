"""F-MTL: Improving Multi-task Learning via Seeking Task-based Flat Regions.

Phan, Tran, Tran, Tran, Truong, Lei, Ho, Phung, Le, 2022, arXiv:2211.13723 (Algorithm 1).

Each task seeks a flat region of its own loss over the shared parameters ``θ`` and its head
``φ_k``. With ``g_k = ∇_θ L_k(θ, φ_k)`` from one clean pass::

    for each task k:
        (e_k, e'_k) = rho-ascent step along (∇_θ L_k, ∇_φk L_k)        SAM or ASAM, see `norm`
        g_k^SAM, φ_k.grad = ∇_(θ, φ_k) L_k(θ + e_k, φ_k + e'_k)         then the weights are restored
        h_k = g_k^SAM - g_k                                              the "flat" gradient
    θ.grad = aggregate(g_1..g_K) + aggregate(h_1..h_K)

``aggregate`` is the run's method: a gradient aggregator's direction, or a loss weighting's
combination ``sum_k w_k (.)`` with ``w_k = ∂objective/∂L_k``. Each head takes its own perturbed
gradient (which the engine multiplies by ``w_k`` under a loss weighting, as in the plain step);
the base optimizer then steps once at the unperturbed weights. ``combine="direct"``
is the paper's ablation that aggregates the perturbed gradients alone:
``θ.grad = aggregate(g_1^SAM..g_K^SAM)``.

Perturbation: ``e = rho T² g / |T g|`` with ``T = 1``, or with ``adaptive`` ``T = |w| + eta`` on
every tensor (the paper's code scales every tensor by ``|w|``, ``eta = 0``). ``norm="separate"``
normalizes the shared part and the head part each to radius ``rho``, as the released scripts
(NYUv2, Cityscapes, CelebA) do; ``norm="joint"`` normalizes them together, one ball of radius
``rho`` over ``(θ, φ_k)``.

Defaults, from the paper's code: ``rho = 2.0`` and ``adaptive = True`` (MultiMNIST, NYUv2 and
CelebA scripts; the Cityscapes launch script runs ``rho = 0``, ``adaptive = False``). Cost per
step: one forward and K backward passes for the clean task gradients, then K perturbed forward and
K backward passes (1 + K forwards, 2K backwards), and two aggregations; one copy of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl.sam.base import Aggregate, Closure, Share, TaskPerturbation, ascent, copy_into

NORMS = ("separate", "joint")
COMBINES = ("sum", "direct")


class FlatMTL(TaskPerturbation):
    """F-MTL: per-task SAM on the shared parameters and the task's head; aggregate clean plus flat gradients."""

    def __init__(self, rho: float = 2.0, adaptive: bool = True, eta: float = 0.0, norm: str = "separate", combine: str = "sum") -> None:
        if rho < 0:
            raise ValueError(f"sam.rho must be non-negative, got {rho}")
        if eta < 0:
            raise ValueError(f"sam.eta must be non-negative, got {eta}")
        if norm not in NORMS:
            raise ValueError(f"sam.norm must be one of {NORMS}, got '{norm}'")
        if combine not in COMBINES:
            raise ValueError(f"sam.combine must be one of {COMBINES}, got '{combine}'")
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta
        self.norm = norm
        self.combine = combine

    def step(
        self,
        losses: Tensor,
        perturbed_losses: Closure,
        shared: Sequence[Tensor],
        heads: Sequence[Sequence[Tensor]],
        aggregate: Aggregate,
        share: Share = list,
    ) -> tuple[Tensor, list[list[Tensor]]]:
        if len(heads) != len(losses):
            raise ValueError(f"F-MTL got {len(losses)} task losses but {len(heads)} heads")
        clean = [task_gradients(loss, shared, head, retain_graph=index < len(losses) - 1) for index, (loss, head) in enumerate(zip(losses, heads))]
        clean = shared_task_gradients(clean, share)
        perturbed = [
            self._perturbed_gradients(task, perturbed_losses, shared, head, shared_gradients, head_gradients)
            for task, (head, (shared_gradients, head_gradients)) in enumerate(zip(heads, clean))
        ]
        perturbed = shared_task_gradients(perturbed, share)
        clean_jacobian = torch.stack([flatten(shared_gradients) for shared_gradients, _ in clean])
        perturbed_jacobian = torch.stack([flatten(shared_gradients) for shared_gradients, _ in perturbed])
        direction = self._direction(clean_jacobian, perturbed_jacobian, losses.detach(), aggregate)
        return direction, [head_gradients for _, head_gradients in perturbed]

    def _perturbed_gradients(
        self,
        task: int,
        perturbed_losses: Closure,
        shared: Sequence[Tensor],
        head: Sequence[Tensor],
        shared_gradients: list[Tensor],
        head_gradients: list[Tensor],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Gradients of task ``task``'s loss at ``(θ + e, φ + e')``; the weights are restored after."""
        parameters = [*shared, *head]
        weights = [parameter.detach().clone() for parameter in parameters]
        shifts = self._perturbation(shared, head, shared_gradients, head_gradients)
        copy_into(parameters, [weight + shift for weight, shift in zip(weights, shifts)])
        try:
            return task_gradients(perturbed_losses()[task], shared, head, retain_graph=False)
        finally:
            copy_into(parameters, weights)

    def _perturbation(self, shared: Sequence[Tensor], head: Sequence[Tensor], shared_gradients: list[Tensor], head_gradients: list[Tensor]) -> list[Tensor]:
        """``(e, e')`` for the shared parameters then the head, normalized jointly or separately."""
        if self.norm == "joint":
            return ascent([*shared_gradients, *head_gradients], self.rho, self._scales([*shared, *head]))
        return ascent(shared_gradients, self.rho, self._scales(shared)) + ascent(head_gradients, self.rho, self._scales(head))

    def _scales(self, parameters: Sequence[Tensor]) -> list[Tensor | None]:
        if not self.adaptive:
            return [None] * len(parameters)
        return [parameter.detach().abs() + self.eta for parameter in parameters]

    def _direction(self, clean: Tensor, perturbed: Tensor, losses: Tensor, aggregate: Aggregate) -> Tensor:
        """The shared update from the clean and perturbed task gradients ``(K, P)``."""
        if self.combine == "direct":
            return aggregate(perturbed, losses)
        return aggregate(clean, losses) + aggregate(perturbed - clean, losses)


def task_gradients(loss: Tensor, shared: Sequence[Tensor], head: Sequence[Tensor], retain_graph: bool) -> tuple[list[Tensor], list[Tensor]]:
    """``(∇_θ loss, ∇_φ loss)``; zeros for a parameter the loss does not reach."""
    parameters = [*shared, *head]
    gradients = torch.autograd.grad(loss, parameters, retain_graph=retain_graph, allow_unused=True)
    filled = [torch.zeros_like(parameter) if gradient is None else gradient for parameter, gradient in zip(parameters, gradients)]
    return filled[: len(shared)], filled[len(shared) :]


def shared_task_gradients(gradients: list[tuple[list[Tensor], list[Tensor]]], share: Share) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Every task's ``(shared, head)`` gradients passed through ``share`` together (one all-reduce)."""
    shared = iter(share([tensor for shared_part, head_part in gradients for tensor in (*shared_part, *head_part)]))
    return [([next(shared) for _ in shared_part], [next(shared) for _ in head_part]) for shared_part, head_part in gradients]


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([tensor.reshape(-1) for tensor in tensors])
