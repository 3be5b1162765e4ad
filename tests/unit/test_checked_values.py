"""The shared checks of callers' values (tinymech/errors.py) and what they accept (torch's
tensors: tests/reference/test_torch_arrays.py)."""
import numpy as np
import pytest

from tinymech.errors import InvalidInputError, SAEInputError, array_of, check_model, whole_number


@pytest.mark.parametrize("value,want", [(5, 5), (np.int64(2), 2), (np.array(7), 7), (np.array(-4, dtype=np.int8), -4)])
def test_whole_numbers_include_0d_integer_arrays(value, want):
    # regression: TransformerLens takes a 0-d integer array or tensor as a layer; they were refused
    assert whole_number(value, "x") == want and type(whole_number(value, "x")) is int


@pytest.mark.parametrize("value", [True, np.bool_(False), np.array(True), 2.0, np.array(2.0), np.array([1]), "3", None])
def test_whole_numbers_refuse_the_rest_by_name(value):
    with pytest.raises(InvalidInputError, match="x must be a whole number"):
        whole_number(value, "x")


def test_arrays_numpy_cannot_read_get_the_callers_error():
    with pytest.raises(SAEInputError, match="acts cannot be read as an array"):
        array_of([[1.0, 2.0], [3.0]], "acts", SAEInputError)


def test_check_model_names_what_it_got():
    with pytest.raises(InvalidInputError, match="model must be a tinymech model .* not str"):
        check_model("gpt2")
