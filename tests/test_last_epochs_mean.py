"""LastEpochsMean: the mean of the last epochs' validation metrics, kept across a resume."""

from types import SimpleNamespace

import pytest
import torch

from mtl.callbacks import LastEpochsMean


def validate(callback, metrics, sanity_checking=False):
    trainer = SimpleNamespace(sanity_checking=sanity_checking, callback_metrics={key: torch.tensor(value) for key, value in metrics.items()})
    callback.on_validation_end(trainer, None)


def test_the_mean_is_over_the_last_epochs_only_and_skips_the_sanity_check():
    callback = LastEpochsMean(epochs=2)
    validate(callback, {"val/depth/abs_error": 100.0}, sanity_checking=True)
    for value in (1.0, 2.0, 4.0):
        validate(callback, {"val/depth/abs_error": value, "train/mean/loss": 9.0})
    assert callback.mean() == {"val/depth/abs_error": pytest.approx(3.0)}


def test_a_resumed_callback_averages_the_epochs_before_the_interruption():
    before = LastEpochsMean(epochs=3)
    for value in (1.0, 2.0):
        validate(before, {"val/a/accuracy": value})
    resumed = LastEpochsMean(epochs=3)
    resumed.load_state_dict(before.state_dict())
    validate(resumed, {"val/a/accuracy": 6.0})
    assert resumed.mean() == {"val/a/accuracy": pytest.approx(3.0)}


def test_it_refuses_no_epochs():
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        LastEpochsMean(epochs=0)
