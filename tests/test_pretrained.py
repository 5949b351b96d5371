"""``load_torchvision_resnet``: a state dict in torchvision's ResNet layout, written here by hand,
loaded into ``ResNet(stem="imagenet")`` and checked against a functional forward of that state dict."""

import pytest
import torch
import torch.nn.functional as F

from mtl.models import ResNet
from mtl.models.pretrained import load_torchvision_resnet

INPUT_SHAPE = (3, 32, 32)
WIDTHS = (8, 16)
BLOCKS = 2


def torchvision_state_dict(widths=WIDTHS, blocks=BLOCKS, in_channels=3, classes=10, seed=0):
    """Random tensors under torchvision's ResNet keys (``conv1``, ``bn1``, ``layer{s}.{b}.*``, ``fc``),
    random BatchNorm running statistics included, so that a swapped name changes the forward."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}

    def convolution(name, out_channels, in_channels, size):
        weights[f"{name}.weight"] = torch.randn(out_channels, in_channels, size, size, generator=generator) / (in_channels * size * size) ** 0.5

    def batch_norm(name, channels):
        weights[f"{name}.weight"] = 0.5 + torch.rand(channels, generator=generator)
        weights[f"{name}.bias"] = 0.1 * torch.randn(channels, generator=generator)
        weights[f"{name}.running_mean"] = 0.1 * torch.randn(channels, generator=generator)
        weights[f"{name}.running_var"] = 0.5 + torch.rand(channels, generator=generator)
        weights[f"{name}.num_batches_tracked"] = torch.randint(1, 1000, (), generator=generator)

    convolution("conv1", widths[0], in_channels, 7)
    batch_norm("bn1", widths[0])
    channels = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            name = f"layer{stage + 1}.{block}"
            convolution(f"{name}.conv1", width, channels, 3)
            batch_norm(f"{name}.bn1", width)
            convolution(f"{name}.conv2", width, width, 3)
            batch_norm(f"{name}.bn2", width)
            if stage > 0 and block == 0:
                convolution(f"{name}.downsample.0", width, channels, 1)
                batch_norm(f"{name}.downsample.1", width)
            channels = width
    weights["fc.weight"] = torch.randn(classes, channels, generator=generator)
    weights["fc.bias"] = torch.randn(classes, generator=generator)
    return weights


def torchvision_forward(weights, x):
    """torchvision's ResNet forward up to ``fc`` in inference mode, written with ``torch.nn.functional``;
    the stages and blocks are those whose keys ``weights`` holds."""

    def batch_norm(x, name):
        return F.batch_norm(x, weights[f"{name}.running_mean"], weights[f"{name}.running_var"], weights[f"{name}.weight"], weights[f"{name}.bias"], training=False)

    x = F.relu(batch_norm(F.conv2d(x, weights["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    stages = sum(f"layer{stage + 1}.0.conv1.weight" in weights for stage in range(len(weights)))
    blocks = sum(f"layer1.{block}.conv1.weight" in weights for block in range(len(weights)))
    for stage in range(stages):
        for block in range(blocks):
            name = f"layer{stage + 1}.{block}"
            stride = 2 if stage > 0 and block == 0 else 1
            out = F.relu(batch_norm(F.conv2d(x, weights[f"{name}.conv1.weight"], stride=stride, padding=1), f"{name}.bn1"))
            out = batch_norm(F.conv2d(out, weights[f"{name}.conv2.weight"], padding=1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in weights:
                x = batch_norm(F.conv2d(x, weights[f"{name}.downsample.0.weight"], stride=stride), f"{name}.downsample.1")
            x = F.relu(out + x)
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def imagenet_resnet(**options):
    return ResNet(input_shape=INPUT_SHAPE, widths=WIDTHS, blocks=BLOCKS, stem="imagenet", **options)


def saved(weights, tmp_path, name="resnet.pth"):
    path = tmp_path / name
    torch.save(weights, path)
    return str(path)


def test_loaded_encoder_computes_the_torchvision_forward(tmp_path):
    weights = torchvision_state_dict()
    encoder = imagenet_resnet(features=None)
    load_torchvision_resnet(encoder, saved(weights, tmp_path))
    x = torch.randn(4, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), torchvision_forward(weights, x))


def test_num_batches_tracked_is_loaded_and_may_be_absent(tmp_path):
    weights = torchvision_state_dict()
    encoder = imagenet_resnet()
    load_torchvision_resnet(encoder, saved(weights, tmp_path))
    assert encoder.layers[1].num_batches_tracked == weights["bn1.num_batches_tracked"]
    # torchvision's older ImageNet files carry no num_batches_tracked
    older = {key: tensor for key, tensor in weights.items() if not key.endswith("num_batches_tracked")}
    load_torchvision_resnet(imagenet_resnet(), saved(older, tmp_path, "older.pth"))


def test_loading_leaves_the_projection_as_initialized(tmp_path):
    encoder = imagenet_resnet(features=12, projection="batchnorm")
    projection = encoder.layers[-4:]  # Linear, BatchNorm1d, ReLU, Dropout
    before = {key: tensor.clone() for key, tensor in projection.state_dict().items()}
    load_torchvision_resnet(encoder, saved(torchvision_state_dict(), tmp_path))
    after = projection.state_dict()
    assert before.keys() == after.keys() and before
    for key, tensor in before.items():
        torch.testing.assert_close(after[key], tensor)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda weights: {"state_dict": weights, "epoch": 90}, id="state_dict-entry"),
        pytest.param(lambda weights: {f"module.{key}": tensor for key, tensor in weights.items()}, id="module-prefix"),
    ],
)
def test_wrapped_and_prefixed_files_load(tmp_path, wrap):
    weights = torchvision_state_dict()
    encoder = imagenet_resnet()
    load_torchvision_resnet(encoder, saved(wrap(weights), tmp_path))
    torch.testing.assert_close(encoder.layers[0].weight.detach(), weights["conv1.weight"])


def test_constructor_loads_pretrained_weights(tmp_path):
    weights = torchvision_state_dict()
    encoder = imagenet_resnet(pretrained=saved(weights, tmp_path))
    x = torch.randn(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(x), torchvision_forward(weights, x))


def test_small_stem_is_refused(tmp_path):
    encoder = ResNet(input_shape=INPUT_SHAPE, widths=WIDTHS, blocks=BLOCKS, stem="small")
    with pytest.raises(ValueError, match="not stem 'small': torchvision's ResNets use the imagenet stem"):
        load_torchvision_resnet(encoder, saved(torchvision_state_dict(), tmp_path))


def test_width_mismatch_names_the_key_and_both_shapes(tmp_path):
    path = saved(torchvision_state_dict(widths=(8, 32)), tmp_path)
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1\.weight \(32, 8, 3, 3\) in the file, \(16, 8, 3, 3\) in the encoder"):
        load_torchvision_resnet(imagenet_resnet(), path)


def test_missing_tensor_is_named(tmp_path):
    weights = torchvision_state_dict()
    del weights["layer2.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"lacks 1 tensor\(s\).*: layer2\.1\.bn2\.running_var"):
        load_torchvision_resnet(imagenet_resnet(), saved(weights, tmp_path))


def test_tensor_that_fits_nowhere_is_named(tmp_path):
    weights = torchvision_state_dict()
    weights["layer1.0.conv3.weight"] = torch.zeros(8, 8, 1, 1)  # a Bottleneck's third convolution
    with pytest.raises(ValueError, match=r"fit nowhere.*: layer1\.0\.conv3\.weight"):
        load_torchvision_resnet(imagenet_resnet(), saved(weights, tmp_path))


def test_missing_file_names_the_path_and_where_the_weights_come_from(tmp_path):
    path = str(tmp_path / "resnet18.pth")
    with pytest.raises(FileNotFoundError, match=rf"pretrained={path}: no such file.*ResNet18_Weights\.IMAGENET1K_V1.*resnet18-f37072fd\.pth"):
        load_torchvision_resnet(imagenet_resnet(), path)
