"""tinymech's bfloat16 rounding (to_bf16, from_bf16) is torch's."""
import numpy as np

from tinymech.arch.bf16 import from_bf16, to_bf16


def test_rounding_matches_torch():
    import torch

    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 1.0 + 2**-8 + 2**-20, -3.5, 1e-40, -1e-45,
                        3.3e38, 3.4e38, np.inf, -np.inf], np.float32)
    x = np.concatenate([special, (rng.standard_normal(10_000) * 10.0 ** rng.integers(-30, 30, 10_000)).astype(np.float32)])
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(to_bf16(x), ref)
    assert np.isnan(from_bf16(to_bf16(np.array([np.nan], np.float32)))).all()
    np.testing.assert_array_equal(from_bf16(ref), torch.from_numpy(ref.view(np.int16)).view(torch.bfloat16).float().numpy())
