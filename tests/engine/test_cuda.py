"""The engine on a GPU against the CPU reference. Skipped without CUDA: ``scripts/device_check.sh``
runs them on the device machine. TF32 is off, so that the GPU's products match float32's."""

import copy

import pytest
import torch

from mtl.engine import jacobian
from mtl.engine.jacobian_modes import JacobianEngine
from mtl.methods.dual_cone import UPGrad
from mtl.methods.mgda import MGDA
from tests.engine.test_jacobian import TASKS, batch, engine_jacobian, make, reference_jacobian, shared, write_gradients

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = torch.device("cuda")
MODELS_WITHOUT_DROPOUT = ["batch_norm", "unused"]  # dropout draws other masks on the GPU


@pytest.fixture(autouse=True)
def without_tf32():
    # cuDNN's convolutions take TF32 by default; matrix products take full float32 by default
    convolutions = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = convolutions


@pytest.fixture
def torch_func_passes(monkeypatch):
    """The number of batched passes that ran by torch.func's vmap, the choice on CUDA."""
    passes = []

    def counted(*arguments):
        passes.append(1)
        return vmapped_products(*arguments)

    vmapped_products = jacobian.vmapped_products
    monkeypatch.setattr(jacobian, "vmapped_products", counted)
    return passes


def on_cuda(data):
    return {key: value.to(CUDA) for key, value in data.items()}


@pytest.mark.parametrize("model_name", MODELS_WITHOUT_DROPOUT)
@pytest.mark.parametrize("mode", ["loop", "batched"])
def test_the_exact_modes_on_cuda_give_the_cpu_reference(mode, model_name, torch_func_passes):
    model, data = make(model_name), batch(model_name)
    expected, _ = reference_jacobian(copy.deepcopy(model), data)
    engine = JacobianEngine(mode)
    rows = engine_jacobian(engine, model.to(CUDA), on_cuda(data))
    assert rows.device.type == "cuda"
    assert torch.allclose(rows.cpu(), expected, atol=1e-5)
    assert engine.mode == mode  # batched did not fall back to loop
    assert len(torch_func_passes) == (mode == "batched")


@pytest.mark.parametrize("method_class", [MGDA, UPGrad])
@pytest.mark.parametrize("model_name", MODELS_WITHOUT_DROPOUT)
def test_the_blocks_of_a_batched_pass_on_cuda_give_the_cpu_direction(method_class, model_name, torch_func_passes):
    # GramianWeighting.combine_blocks and row_inner_products on CUDA tensors
    model, data = make(model_name), batch(model_name)
    expected, losses = reference_jacobian(copy.deepcopy(model), data)
    expected_direction = method_class(len(TASKS))(expected, losses.detach())
    engine = JacobianEngine("batched")
    write_gradients(engine, method_class(len(TASKS)), model.to(CUDA), on_cuda(data))
    direction = torch.cat([parameter.grad.flatten() for parameter in shared(model)])
    assert torch.allclose(direction.cpu(), expected_direction, atol=1e-5)
    assert engine.mode == "batched" and len(torch_func_passes) == 1
