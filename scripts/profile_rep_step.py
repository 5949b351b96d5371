"""Where the time of a ``jacobian.mode=rep`` step goes, part by part, beside EW's step.

On a ``bench_setups`` setup (default mlp-k40, whose heads are linear), with the host settings
``mtl-train`` applies, the median time of:

- EW's whole step, and its backward pass through the heads (one ``dL/dz``, accumulated);
- the rep step's forward (heads reading their copies of ``z``, linear heads' outputs recorded);
- its one backward pass through the heads, to the linear heads' outputs (or to every
  ``dL_k/dz``) and the heads' parameters; and the same pass to every ``dL_k/dz``, formed;
- the Gramian of the representation gradients from the linear heads' products
  (``mtl.engine.linear_heads``) and from the formed ``Z (K, B·D)``, and their combination;
- each method's weights from that Gramian; the encoder's backward of one direction;
- UPGrad's weights as the method solves them (``K`` non-negative least-squares problems,
  ``CosineQuadraticForm.minimize_above``) beside ``K`` QPs by quadprog, on the same Gramian.

    python scripts/profile_rep_step.py --setup mlp-k40
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from bench_setups import SETUPS
from bench_steps import mtl_step
from bench_timing import interleaved_rounds
from mtl.engine.host_memory import retain_freed_host_memory
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.engine.linear_heads import LinearHeadGradients
from mtl.engine.modes import dense
from mtl.methods import METHODS
from mtl.methods.dual_cone import UPGrad
from mtl.methods.solvers import CosineQuadraticForm
from mtl.tasks import INPUT_KEY, task_losses

METHOD_NAMES = ("mgda", "pcgrad", "cagrad", "nash_mtl", "imtl_g", "upgrad")


def median_ms(work, warmup: int, steps: int) -> float:
    return 1e3 * statistics.median(interleaved_rounds({"step": work}, warmup, steps)["step"])


def upgrad_weights_by_quadprog(gramian: torch.Tensor) -> torch.Tensor:
    """UPGrad's weights from K QPs solved by quadprog (its dual active-set method)."""
    form, rows = CosineQuadraticForm(gramian), torch.eye(len(gramian), dtype=gramian.dtype)
    return torch.stack([torch.maximum(form.minimize(rows, row), row) for row in rows]).mean(dim=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="mlp-k40", choices=sorted(SETUPS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()
    setup = SETUPS[args.setup]
    model, tasks = setup.model(), setup.tasks()
    batch = setup.batch(setup.batch_size, torch.device("cpu"))
    names = [task.name for task in tasks]
    heads = [parameter for name in names for parameter in model.task_parameters(name)]
    shared = list(model.shared_parameters())
    engine = JacobianEngine("rep")
    timed = lambda work: median_ms(work, args.warmup, args.steps)  # noqa: E731

    def forward():
        representation, predictions = engine.forward(model, batch[INPUT_KEY], names)
        return representation, task_losses(tasks, predictions, batch)

    representation, losses = forward()
    stacked = torch.stack(losses)[None]
    backward = lambda: engine.backward_through_heads([losses], stacked, [representation], heads)  # noqa: E731
    [(z, gradients)], _ = backward()
    rows = dense(gradients).flatten(start_dim=1)
    leaf = z.detach().requires_grad_()
    ew_heads_loss = torch.stack(task_losses(tasks, model.decode(leaf), batch)).mean()
    ew_step, _ = mtl_step(setup.model(), tasks, None, "ew", batch)  # its own copy: its SGD steps change the weights
    products = isinstance(gradients, LinearHeadGradients)
    gramian = gradients.gramian() if products else rows @ rows.T
    task_weights = torch.full((len(tasks),), 1 / len(tasks), dtype=torch.float64)
    formed = dataclasses.replace(representation, linear_heads=None)
    parts = {
        "EW whole step": timed(ew_step),
        "rep forward (heads on copies of z)": timed(forward),
        f"rep backward through the heads (to {'their outputs' if products else 'every dL_k/dz'} and their parameters)": timed(backward),
        "rep backward through the heads to every dL_k/dz, formed": timed(lambda: engine.backward_through_heads([losses], stacked, [formed], heads)),
        "EW backward through the heads (one dL/dz and the heads)": timed(lambda: torch.autograd.grad(ew_heads_loss, [leaf, *heads], retain_graph=True)),
        f"Gramian of Z {tuple(rows.shape)}, formed": timed(lambda: rows @ rows.T),
    }
    if products:
        parts["Gramian of Z from the linear heads' products"] = timed(gradients.gramian)
        parts["combination of Z from the linear heads' products"] = timed(lambda: gradients.combination(task_weights))
    parts["combination of the formed Z"] = timed(lambda: task_weights.float() @ rows)
    parts["encoder backward of one direction"] = timed(lambda: torch.autograd.grad(z, shared, grad_outputs=rows[0].view_as(z), retain_graph=True))
    for name in METHOD_NAMES:
        method = METHODS[name](len(tasks))
        parts[f"{name} weights from the Gramian"] = timed(lambda method=method: method.gramian_weights(gramian, stacked[0]))
    gramian = gramian.double()
    parts["UPGrad weights, K non-negative least squares (the method)"] = timed(lambda: UPGrad(len(tasks)).weights(gramian, stacked[0].double()))
    parts["UPGrad weights, K QPs by quadprog"] = timed(lambda: upgrad_weights_by_quadprog(gramian))
    print(f"{args.setup}, {args.threads} threads, torch {torch.__version__}; median over {args.steps} calls after {args.warmup}\n")
    print("| part | ms |\n| --- | --- |")
    for part, milliseconds in parts.items():
        print(f"| {part} | {milliseconds:.1f} |")


if __name__ == "__main__":
    main()
