import pytest
import torch

from mskd.networks.checks import check_input


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 2, 16, 16), r"expects a B, 1, H, W input, got shape \[1, 2, 16, 16\]"),
        ((1, 16, 16), r"expects a B, 1, H, W input, got shape \[1, 16, 16\]"),
        ((1, 1, 16, 12), r"Net needs H and W divisible by 8, got \(16, 12\)"),
    ],
)
def test_bad_inputs_are_named(shape, message):
    with pytest.raises(ValueError, match=message):
        check_input(torch.zeros(shape), "Net", 1, 8)


def test_good_input_passes_and_scripts():
    check_input(torch.zeros(2, 1, 16, 24), "Net", 1, 8)
    scripted = torch.jit.script(check_input)
    with pytest.raises(Exception, match="divisible by 8"):
        scripted(torch.zeros(1, 1, 12, 16), "Net", 1, 8)
