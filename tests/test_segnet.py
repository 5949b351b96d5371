"""SegNet and SegNet-MTAN: shapes, the shared/task split by the losses that reach each parameter,
SegNet-MTAN's forward against the paper's formulas, and the official code's widths."""

import functools

import pytest
import torch
import torch.nn.functional as F

from mtl.dense_tasks import DepthTask, SegmentationTask, SurfaceNormalTask
from mtl.models import DenseHead, HardParameterSharing, SegNet, SegNetMTAN

TASKS = [SegmentationTask("segmentation", 5), DepthTask("depth"), SurfaceNormalTask("normal")]
SMALL = (4, 6, 8, 8, 8)
SHAPE = (3, 32, 64)


def small_mtan(filters=SMALL):
    torch.manual_seed(0)
    return SegNetMTAN(TASKS, SHAPE, filters)


def inputs(batch=2):
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("model", ["segnet", "segnet_mtan"])
def test_every_task_gets_a_map_of_its_width_at_the_input_resolution(model):
    built = small_mtan() if model == "segnet_mtan" else HardParameterSharing(functools.partial(SegNet, filters=SMALL), DenseHead, TASKS, SHAPE)
    outputs = built(inputs())
    assert {name: tuple(output.shape) for name, output in outputs.items()} == {task.name: (2, task.num_outputs, 32, 64) for task in TASKS}


def test_segnet_refuses_an_input_it_cannot_pool_five_times():
    with pytest.raises(ValueError, match="multiples of 32, got 30x64"):
        SegNet((3, 30, 64))


def official_parameter_count() -> int:
    """The parameters of the MTAN code's SegNet-MTAN for NYUv2, counted from the channel lists of
    its layers (lorenmt/mtan model_segnet_mtan.py): conv_layer([in, out]) is a 3x3 conv with bias
    and a BatchNorm, att_layer([a, b, c]) two 1x1 convs with bias and two BatchNorms."""

    def conv(source, target):
        return 9 * source * target + target + 2 * target

    def att(source, middle, target):
        return source * middle + 3 * middle + middle * target + 3 * target

    def prediction(width, outputs):
        return 9 * width * width + width + width * outputs + outputs

    encoder_block = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 512)]
    decoder_block = [(64, 64), (128, 64), (256, 128), (512, 256), (512, 512)]
    conv_block_enc = [(64, 64), (128, 128), *[(256, 256)] * 2, *[(512, 512)] * 4]
    conv_block_dec = [(64, 64), (64, 64), *[(128, 128)] * 2, *[(256, 256)] * 2, *[(512, 512)] * 2]
    encoder_att = [(64, 64, 64), (256, 128, 128), (512, 256, 256), (1024, 512, 512), (1024, 512, 512)]
    decoder_att = [(128, 64, 64), (192, 64, 64), (384, 128, 128), (768, 256, 256), (1024, 512, 512)]
    encoder_block_att = [(64, 128), (128, 256), (256, 512), (512, 512), (512, 512)]
    decoder_block_att = [(64, 64), (128, 64), (256, 128), (512, 256), (512, 512)]
    shared = sum(conv(*layer) for layer in [*encoder_block, *decoder_block, *conv_block_enc, *conv_block_dec, *encoder_block_att, *decoder_block_att])
    per_task = sum(att(*layer) for layer in [*encoder_att, *decoder_att])
    return shared + 3 * per_task + sum(prediction(64, outputs) for outputs in (13, 1, 3))


def test_the_official_widths_give_the_official_segnet_mtan_parameter_count():
    tasks = [SegmentationTask("segmentation", 13), DepthTask("depth"), SurfaceNormalTask("normal")]
    assert sum(parameter.numel() for parameter in SegNetMTAN(tasks, (3, 32, 32)).parameters()) == official_parameter_count()


def test_segnet_mtan_shares_the_segnet_and_its_blocks_and_gives_each_task_its_masks_and_head():
    model, x = small_mtan(), inputs()
    shared = {id(parameter) for parameter in model.shared_parameters()}
    own = {task.name: {id(parameter) for parameter in model.task_parameters(task.name)} for task in TASKS}
    assert sorted([*shared, *(i for ids in own.values() for i in ids)]) == sorted(id(parameter) for parameter in model.parameters())
    parameters = list(model.parameters())
    reached = {}
    for task in TASKS:
        gradients = torch.autograd.grad(model(x)[task.name].pow(2).sum(), parameters, allow_unused=True)
        reached[task.name] = {id(p) for p, g in zip(parameters, gradients) if g is not None and g.abs().sum() > 0}
    for task in TASKS:
        others = set().union(*(reached[other.name] for other in TASKS if other is not task))
        assert own[task.name] <= reached[task.name] and not own[task.name] & others
    assert all(sum(i in reached[task.name] for task in TASKS) == len(TASKS) for i in shared)


def test_a_segnet_mtan_task_reads_its_masks_on_the_shared_levels_as_the_paper_writes_them():
    model, x = small_mtan(), inputs()
    shared = model.segnet.features(x)
    for task in TASKS:
        encoder_masks, decoder_masks = model.encoder_attention[task.name], model.decoder_attention[task.name]
        attended = encoder_masks[0](shared.encoder_inputs[0]) * shared.encoder_outputs[0]
        for j in range(1, 5):
            previous = F.max_pool2d(model.encoder_blocks[j - 1](attended), 2)
            attended = encoder_masks[j](torch.cat([shared.encoder_inputs[j], previous], dim=1)) * shared.encoder_outputs[j]
        features = F.max_pool2d(model.encoder_blocks[4](attended), 2)
        for j in range(5):
            upsampled = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=True)
            features = decoder_masks[j](torch.cat([shared.unpooled[j], model.decoder_blocks[j](upsampled)], dim=1)) * shared.decoder_outputs[j]
        assert torch.allclose(model(x)[task.name], model.heads[task.name](features), atol=1e-5)


def test_segnet_mtan_with_decoder_masks_of_one_is_the_shared_segnet():
    model, x = small_mtan(), inputs()
    with torch.no_grad():
        for masks in model.decoder_attention.values():
            masks[-1][-2].weight.zero_()  # the last level's final BatchNorm: sigmoid(30) = 1 in float32
            masks[-1][-2].bias.fill_(30.0)
    for task in TASKS:
        assert torch.allclose(model(x)[task.name], model.heads[task.name](model.segnet(x)))


def test_segnet_mtan_masks_lie_in_the_unit_interval_one_per_level():
    masks = small_mtan().attention_masks(inputs())
    assert all(len(levels) == 10 and all(torch.all((mask > 0) & (mask < 1)) for mask in levels) for levels in masks.values())


def test_the_segnet_decoder_unpools_to_the_maxima_of_its_encoder():
    model = SegNet(SHAPE, SMALL).eval()
    shared = model.features(inputs())
    deepest = shared.encoder_outputs[-1]
    pooled = F.max_pool2d(deepest, 2)
    unpooled = shared.unpooled[0]
    assert unpooled.shape == deepest.shape
    assert torch.equal(F.max_pool2d(unpooled, 2), pooled) and (unpooled != 0).sum() <= pooled.numel()
