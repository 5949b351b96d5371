import functools

import pytest
import torch

from mtl.models import MLP, HardParameterSharing, LeNet, MLPHead, ResNet
from mtl.tasks import ClassificationTask

TASKS = [ClassificationTask("left", 10), ClassificationTask("right", 3)]


@pytest.mark.parametrize(
    ("encoder", "input_shape", "out_features"),
    [
        (functools.partial(MLP, hidden=(32, 16)), (1, 12, 12), 16),
        (LeNet, (1, 36, 36), 50),
        (functools.partial(ResNet, widths=(8, 16)), (3, 32, 32), 16),
    ],
)
def test_hard_sharing_outputs_one_prediction_per_task(encoder, input_shape, out_features):
    model = HardParameterSharing(encoder, MLPHead, TASKS, input_shape)
    assert model.encoder.out_features == out_features
    outputs = model(torch.randn(5, *input_shape))
    assert {name: tuple(output.shape) for name, output in outputs.items()} == {"left": (5, 10), "right": (5, 3)}


def test_lenet_flattens_to_the_published_feature_counts():
    # 36 -conv5-> 32 -pool-> 16 -conv5-> 12 -pool-> 6: 20 channels * 6 * 6 = 720 (Sener & Koltun's Multi-LeNet).
    assert LeNet((1, 36, 36)).projection[0].in_features == 720
    # Sener & Koltun's canvases resized to 28x28: 28 -> 24 -> 12 -> 8 -> 4, 20 * 4 * 4 = 320 as in their code.
    assert LeNet((1, 28, 28)).projection[0].in_features == 320
    # Pareto MTL's LeNet: 36 -conv9-> 28 -pool-> 14 -conv5-> 10 -pool-> 5, 20 * 5 * 5 = 500.
    assert LeNet((1, 36, 36), kernel_size=[9, 5]).projection[0].in_features == 500


def test_lenet_on_a_too_small_canvas_says_so():
    with pytest.raises(ValueError, match=r"LeNet with kernel_size=5 cannot take inputs of shape \(1, 12, 12\)"):
        LeNet((1, 12, 12))


def test_shared_and_task_parameters_partition_the_model():
    model = HardParameterSharing(MLP, functools.partial(MLPHead, hidden=(8,)), TASKS, (1, 4, 4))
    groups = [list(model.shared_parameters())] + [list(model.task_parameters(task.name)) for task in TASKS]
    ids = [id(parameter) for group in groups for parameter in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_decode_of_encode_is_forward():
    model = HardParameterSharing(LeNet, MLPHead, TASKS, (1, 36, 36)).eval()
    x = torch.randn(2, 1, 36, 36)
    direct, split = model(x), model.decode(model.encode(x))
    assert all(torch.equal(direct[name], split[name]) for name in direct)


def test_unknown_task_names_the_model_tasks():
    model = HardParameterSharing(MLP, MLPHead, TASKS, (1, 4, 4))
    with pytest.raises(KeyError, match=r"no task named 'middle'; the model's tasks are \['left', 'right'\]"):
        model.task_parameters("middle")


def test_the_fmtl_resnet18_has_torchvisions_resnet18_parameters_on_one_channel_with_a_100_wide_fc():
    # torchvision's resnet18 has 11,689,512 parameters; a one-channel conv1 has 64*49 weights
    # instead of 64*3*49, and fc 512 -> 100 has 51,300 instead of 513,000
    expected = 11_689_512 - 64 * 49 * 2 - (513_000 - 51_300)
    encoder = ResNet((1, 36, 36), widths=(64, 128, 256, 512), blocks=2, stem="imagenet", features=100)
    assert sum(parameter.numel() for parameter in encoder.parameters()) == expected
    assert encoder(torch.randn(2, 1, 36, 36)).shape == (2, 100) and encoder.out_features == 100


def test_an_unknown_resnet_stem_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown ResNet stem 'cifar'; valid choices: \['small', 'imagenet'\]"):
        ResNet((1, 36, 36), stem="cifar")


def test_libmtls_office_projection_is_a_small_normal_linear_then_batchnorm_relu_and_dropout():
    torch.manual_seed(0)
    encoder = ResNet((3, 32, 32), widths=(64, 128, 256, 512), blocks=2, stem="imagenet", features=512, projection="batchnorm", dropout=0.5)
    linear, norm, relu, dropout = list(encoder.layers)[-4:]
    assert isinstance(linear, torch.nn.Linear) and (linear.in_features, linear.out_features) == (512, 512)
    assert linear.weight.std().item() == pytest.approx(0.005, rel=0.01) and torch.all(linear.bias == 0.1)
    assert isinstance(norm, torch.nn.BatchNorm1d) and isinstance(relu, torch.nn.ReLU) and dropout.p == 0.5
    # torchvision's resnet18 without its fc (513,000), then 512*512 + 512 and the BatchNorm's 2*512
    assert sum(parameter.numel() for parameter in encoder.parameters()) == 11_689_512 - 513_000 + 512 * 513 + 1024


def test_a_projection_or_dropout_that_cannot_apply_is_refused():
    with pytest.raises(ValueError, match=r"unknown ResNet projection 'gelu'; valid choices: \['relu', 'batchnorm'\]"):
        ResNet((3, 32, 32), features=8, projection="gelu")
    with pytest.raises(ValueError, match=r"dropout=0.5 applies to the projection='batchnorm' of features; here features=8, projection='relu'"):
        ResNet((3, 32, 32), features=8, dropout=0.5)
