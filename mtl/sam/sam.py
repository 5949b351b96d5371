"""SAM and ASAM: minimize the loss at the worst nearby weights.

SAM: Foret, Kleiner, Mobahi, Neyshabur, 2021, "Sharpness-Aware Minimization for Efficiently
Improving Generalization", arXiv:2010.01412. With ``g = ∇L(w)`` (eq. 2 and Algorithm 1)::

    e = rho g / |g|                       the first-order worst case in the ball |e| ≤ rho
    w ← optimizer step with ∇L(w + e)     the gradient at the perturbed weights

ASAM: Kwon, Kim, Park, Choi, 2021, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", arXiv:2102.11600. The ball is taken in the
coordinates of a normalization operator ``T_w``, ``|T_w⁻¹ e| ≤ rho`` (eq. 8 and Algorithm 1)::

    e = rho T_w² g / |T_w g|,   T_w = diag(|w| + eta) on weight tensors, 1 on biases

so rescalings that leave the network's function unchanged (a ReLU layer times c, the next one
divided by c) rescale the perturbation alike and leave the adaptive sharpness unchanged. "Weight
tensors" are those with two or more dimensions (matrices, kernels); biases and normalization
gains keep ``T = 1`` (the official code selects by the name "weight", so it also scales
normalization gains).

In a multi-task step ``L`` is whatever the run minimizes: the ascent direction ``g`` is the update
the step writes into ``.grad`` (a loss weighting's weighted-loss gradient; a gradient
aggregator's direction on the shared parameters and each head's own task gradient), and the
final gradient is that same update recomputed at ``w + e``.

The pass at ``w + e`` replays the random draws of the pass at ``w`` (the same dropout masks), so
the two gradients are of the same loss.

Defaults: SAM ``rho = 0.05`` (the paper's CIFAR value); ASAM ``rho = 0.5``, ``eta = 0.01`` (the
paper's CIFAR values with SGD). Cost: two forward and two backward passes per step, and one copy
of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mtl.sam.base import Closure, RandomState, WeightPerturbation, ascent, copy_into, gradients_of


class SAM(WeightPerturbation):
    """SAM (``adaptive=False``) or ASAM (``adaptive=True``, ``T_w = |w| + eta`` on weight tensors)."""

    def __init__(self, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01) -> None:
        if rho < 0:
            raise ValueError(f"sam.rho must be non-negative, got {rho}")
        if eta < 0:
            raise ValueError(f"sam.eta must be non-negative, got {eta}")
        self.rho = rho
        self.adaptive = adaptive
        self.eta = eta

    def step(self, clean: Closure, perturbed: Closure, parameters: Sequence[Tensor], learning_rate: float) -> Tensor:
        randomness = RandomState.capture(parameters[0].device)
        losses = clean()
        weights = [parameter.detach().clone() for parameter in parameters]
        clean_gradients = gradients_of(parameters)
        perturbation = ascent(clean_gradients, self.radius(learning_rate), self.scales(parameters))
        copy_into(parameters, [weight + shift for weight, shift in zip(weights, perturbation)])
        for parameter in parameters:
            parameter.grad = None
        try:
            with randomness.replayed():  # the clean pass's dropout masks
                perturbed()
        finally:  # also when the perturbed pass raises (a non-finite loss there, which may be skipped)
            copy_into(parameters, weights)
        self.finish(parameters, clean_gradients)
        return losses

    def radius(self, learning_rate: float) -> float:
        """The radius ``rho`` of this step."""
        return self.rho

    def scales(self, parameters: Sequence[Tensor]) -> list[Tensor | None]:
        """The diagonal of ``T_w`` per parameter (``None`` for ``T = 1``)."""
        if not self.adaptive:
            return [None] * len(parameters)
        return [parameter.detach().abs() + self.eta if parameter.dim() > 1 else None for parameter in parameters]

    def finish(self, parameters: Sequence[Tensor], clean_gradients: Sequence[Tensor]) -> None:
        """Turn the gradients at ``w + e`` in ``.grad`` into the final update (SAM keeps them)."""
