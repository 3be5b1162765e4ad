"""The shared checks of callers' values (tinymech/errors.py) and what they accept."""
import numpy as np
import pytest
import torch

import tinymech as tm
from tinymech.errors import InvalidInputError, SAEInputError, array_of, whole_number


@pytest.mark.parametrize("value,want", [(5, 5), (np.int64(2), 2), (np.array(7), 7), (torch.tensor(3), 3),
                                        (np.array(-4, dtype=np.int8), -4)])
def test_whole_numbers_include_0d_integer_arrays_and_tensors(value, want):
    # regression: TransformerLens takes get_act_name("pattern", torch.tensor(1)); a 0-d array or tensor was refused
    assert whole_number(value, "x") == want and type(whole_number(value, "x")) is int


@pytest.mark.parametrize("value", [True, np.bool_(False), np.array(True), torch.tensor(True), 2.0, np.array(2.0),
                                   torch.tensor(1.5), np.array([1]), "3", None])
def test_whole_numbers_refuse_the_rest_by_name(value):
    with pytest.raises(InvalidInputError, match="x must be a whole number"):
        whole_number(value, "x")


def test_act_names_take_a_0d_tensor_layer():
    assert tm.utils.get_act_name("pattern", torch.tensor(1)) == "blocks.1.attn.hook_pattern"


@pytest.mark.parametrize("value", [[[1.0, 2.0], [3.0]], torch.ones(2, requires_grad=True)])
def test_arrays_numpy_cannot_read_get_the_callers_error(value):
    with pytest.raises(SAEInputError, match="acts cannot be read as an array"):
        array_of(value, "acts", SAEInputError)


def test_check_model_names_what_it_got():
    from tinymech.errors import check_model

    with pytest.raises(InvalidInputError, match="model must be a tinymech model .* not str"):
        check_model("gpt2")
