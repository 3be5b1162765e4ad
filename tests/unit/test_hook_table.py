"""Hook points are listed once, in the core's table (csrc/core/hooks.cpp's
kHooks, read through _core.hook_table): the names, the points with a head axis
and the widths an SAE may read there all follow it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES
from numpy_checkpoints import write_llama
from tinymech import _core, hooks
from tinymech.sae.splice import hook_widths

TABLE = _core.hook_table()


def test_the_names_follow_the_table():
    top = [row["name"] for row in TABLE if not row["per_layer"]]
    block = [row["name"] for row in TABLE if row["per_layer"]]
    names = top[:2] + [f"blocks.{layer}.{name}" for layer in range(3) for name in block] + top[2:]
    assert _core.hook_names(3) == names


def test_pythons_lists_are_the_tables():
    assert hooks._HEADED == tuple(row["name"] for row in TABLE if row["heads"])
    assert {hooks.hook_row(f"blocks.1.{row['name']}" if row["per_layer"] else row["name"])["name"]
            for row in TABLE} == {row["name"] for row in TABLE}


def test_every_point_has_a_short_name():
    # get_act_name's short names are aliases (two for some points); each point needs one
    short = set(hooks._SHORT_NAMES.values())
    unnamed = [row["name"] for row in TABLE if not {row["name"], row["name"].rpartition(".")[2]} & short]
    assert unnamed == ["unembed.hook_in", "unembed.hook_out"]  # TransformerLens's get_act_name has none for them


def test_no_other_python_file_lists_head_axis_points():
    # hooks.py and sae/splice.py each held their own list; only get_act_name's aliases remain
    root = Path(__file__).resolve().parents[2]  # the repository (the tests may run on an installed package)
    headed = [row["name"] for row in TABLE if row["heads"]]
    listing = []
    for path in sorted((root / "tinymech").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if sum(f'"{name}"' in text for name in headed) > 2:  # a use names one or two (cache.py: z, result)
            listing.append(path.relative_to(root).as_posix())
    assert listing == ["tinymech/hooks.py"]


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_hook_table")
    write_llama(path, **LLAMA_SHAPES["gqa"])
    return tm.load(path)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_the_table_gives_each_activations_shape(which, saved_gpt2, gqa_llama):
    model = gqa_llama if which == "llama" else saved_gpt2("small")[0]
    tokens = np.arange(1, 6)[None]
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    for name in model.hook_names():
        shape, widths = cache[name].shape, hook_widths(model.cfg, name)
        row = hooks.hook_row(name)
        if widths is None:  # [batch, head, query, key]
            assert shape[1:] == (model.cfg.n_heads, 5, 5), name
        elif row["heads"]:  # [batch, pos, head, inner]
            assert (shape[2] * shape[3], shape[3]) == widths, name
        else:
            assert shape[2:] == widths, name
