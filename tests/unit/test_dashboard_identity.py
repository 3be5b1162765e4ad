"""Dashboards loaded for an SAE are that SAE's: a dashboards folder recording the hash of
its SAE's weights is checked against it; one recording none (made elsewhere, or by hand)
loads with a visible warning, naming what could not be checked, unless trusted explicitly; a
Neuronpedia export is compared by what it names (Neuronpedia's SAE id, the hook, the layer)
and refused where that is another SAE, with a warning where it names nothing to compare."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

import tinymech as tm
from dashboard_factory import synthetic, synthetic_dashboards
from numpy_checkpoints import write_sae
from tinymech.errors import InvalidInputError
from tinymech.sae.dashboards.neuronpedia import export_neuronpedia, import_neuronpedia
from tinymech.sae.dashboards.store import FeatureDashboards, sae_sha256, write_folder
from tinymech.text import printable
from tinymech.tui.backend import Backend

D_SAE = 6
HOOK = "blocks.0.hook_resid_pre"  # the synthetic dashboards' hook


@pytest.fixture(scope="module")
def sae(tmp_path_factory):
    return tm.SAE.load(write_sae(tmp_path_factory.mktemp("sae"), "standard", 16, D_SAE, hook=HOOK))


@pytest.fixture(scope="module")
def other_hook_sae(tmp_path_factory):
    return tm.SAE.load(
        write_sae(tmp_path_factory.mktemp("sae1"), "standard", 16, D_SAE, hook="blocks.1.hook_resid_pre")
    )


def folder(path, **meta):
    """A synthetic dashboards folder of D_SAE features, its index's fields replaced."""
    m, arrays, vocab = synthetic(n_features=D_SAE)
    m.update(meta)
    write_folder(path, m, arrays, vocab, {})
    return path


def no_warning(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


def test_dashboard_folder_with_the_saes_hash_loads_quietly(sae, tmp_path):
    path = folder(tmp_path / "d", sae_sha256=sae_sha256(sae))
    dash = no_warning(lambda: FeatureDashboards.load(path, sae=sae))
    assert dash.unverified is None


def test_dashboard_folder_without_a_hash_warns_and_says_why(sae, other_hook_sae, tmp_path):
    path = folder(tmp_path / "d")  # sae_sha256: null, as dashboards made elsewhere
    with pytest.warns(UserWarning, match="record no hash of their SAE's weights") as caught:
        dash = FeatureDashboards.load(path, sae=sae)
    assert "trust_unverified=True" in str(caught[0].message)
    assert "only their width (6) and hook match" in dash.unverified
    with pytest.warns(UserWarning, match=f"they were built at {HOOK}, the SAE reads blocks.1.hook_resid_pre"):
        FeatureDashboards.load(path, sae=other_hook_sae)
    # the explicit opt-in: no warning, the reason kept
    trusted = no_warning(lambda: FeatureDashboards.load(path, sae=sae, trust_unverified=True))
    assert trusted.unverified == dash.unverified
    assert no_warning(lambda: FeatureDashboards.load(path)).unverified is None  # loaded for no SAE: nothing to check


def test_dashboard_folder_of_neurons_is_refused_for_an_sae(sae, tmp_path):
    path = folder(tmp_path / "d", kind="neurons", hook="blocks.0.mlp.hook_post")
    with pytest.raises(InvalidInputError, match="MLP layer's neurons .*, not of an SAE's features"):
        FeatureDashboards.load(path, sae=sae)


def test_dashboard_folder_with_a_hostile_hook_warns_harmlessly(other_hook_sae, tmp_path):
    path = folder(tmp_path / "d", hook="\x1b]0;pwned\x07\u202e")
    with pytest.warns(UserWarning) as caught:
        dash = FeatureDashboards.load(path, sae=other_hook_sae)
    assert printable(dash.unverified, keep="") == dash.unverified
    assert printable(str(caught[0].message), keep="") == str(caught[0].message)


# ---- Neuronpedia exports ------------------------------------------------------------------------------------


def export(tmp_path, **ids):
    return export_neuronpedia(synthetic_dashboards(n_features=D_SAE), tmp_path / "np.json", **ids)


def test_neuronpedia_export_of_another_hook_is_refused(other_hook_sae, tmp_path):
    path = export(tmp_path)  # hookName and layer: blocks.0.hook_resid_pre
    with pytest.raises(InvalidInputError, match=f"holds features of {HOOK}, the SAE reads blocks.1.hook_resid_pre"):
        import_neuronpedia(path, sae=other_hook_sae)


def test_neuronpedia_export_is_matched_by_neuronpedia_id(sae, tmp_path):
    named = tm.SAE(
        dataclasses.replace(sae.cfg, neuronpedia_id="gpt2-small/0-res-jb"),
        {k: getattr(sae, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")},
    )
    dash = no_warning(lambda: import_neuronpedia(export(tmp_path, model_id="gpt2-small", sae_id="0-res-jb"), sae=named))
    assert dash.unverified is None and dash.n_features == D_SAE
    with pytest.raises(
        InvalidInputError, match="Neuronpedia's gpt2-small/0-res-att-kk, the SAE is gpt2-small/0-res-jb"
    ):
        import_neuronpedia(export(tmp_path, model_id="gpt2-small", sae_id="0-res-att-kk"), sae=named)


def test_neuronpedia_export_with_a_matching_hook_warns(sae, tmp_path):
    with pytest.warns(UserWarning, match="matches the SAE's hook"):
        dash = import_neuronpedia(export(tmp_path), sae=sae)
    assert dash.unverified and dash.n_features == D_SAE


def test_neuronpedia_hook_read_under_another_name_is_the_same(other_hook_sae, tmp_path):
    # blocks.0.hook_resid_post holds what blocks.1.hook_resid_pre reads
    with pytest.warns(UserWarning, match="matches the SAE's hook"):
        import_neuronpedia(feature_file(tmp_path, hookName="blocks.0.hook_resid_post"), sae=other_hook_sae)


def feature_file(tmp_path, name="f.json", **fields):
    path = tmp_path / name
    path.write_text(json.dumps([{"index": "1", "frac_nonzero": 0.1, **fields}]))
    return path


def test_neuronpedia_layer_of_another_block_is_refused(sae, tmp_path):
    # Neuronpedia's SAE ids start with the layer: "6-res-jb" is of blocks.6
    path = feature_file(tmp_path, modelId="gpt2-small", layer="6-res-jb")
    with pytest.raises(InvalidInputError, match=r"layer 6 \(Neuronpedia's 6-res-jb\), the SAE reads layer 0"):
        import_neuronpedia(path, sae=sae)
    with pytest.warns(UserWarning, match="matches the SAE's layer"):
        import_neuronpedia(feature_file(tmp_path, "g.json", modelId="gpt2-small", layer="0-res-jb"), sae=sae)


def test_neuronpedia_file_naming_nothing_warns(sae, tmp_path):
    with pytest.warns(UserWarning, match="names no Neuronpedia id, hook or layer to check against the SAE"):
        dash = import_neuronpedia(feature_file(tmp_path), sae=sae)
    assert dash.n_features == D_SAE
    assert no_warning(lambda: import_neuronpedia(feature_file(tmp_path), sae=sae, trust_unverified=True)).unverified


def test_neuronpedia_file_of_several_saes_is_refused(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([{"index": 1, "layer": "0-res-jb"}, {"index": 2, "layer": "\x1b[2J1-res-jb"}]))
    with pytest.raises(InvalidInputError, match="features of more than one SAE") as e:
        import_neuronpedia(path)
    assert printable(str(e.value), keep="") == str(e.value)


def test_neuronpedia_hostile_hook_is_refused_harmlessly(other_hook_sae, tmp_path):
    path = feature_file(tmp_path, hookName="blocks.1.hook_resid_pre\x1b]0;pwned\x07")
    with pytest.raises(InvalidInputError) as e:
        import_neuronpedia(path, sae=other_hook_sae)
    assert printable(str(e.value), keep="") == str(e.value)


# ---- the TUI's backend ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(saved_gpt2):
    return saved_gpt2("tiny")[0]


def test_tui_backend_refuses_a_neuronpedia_file_of_another_hook(model, other_hook_sae, tmp_path):
    backend = Backend(model, [other_hook_sae], dashboards=[export(tmp_path)])
    with pytest.raises(InvalidInputError, match="the SAE reads blocks.1.hook_resid_pre"):
        backend.load_dashboards(0)


def test_tui_backend_keeps_the_dashboard_warning_for_the_screen(model, sae, tmp_path):
    # no warning from the worker thread (it would reach no one): the dashboard screen shows dash.unverified
    backend = Backend(model, [sae], dashboards=[folder(tmp_path / "d")])
    dash = no_warning(lambda: backend.load_dashboards(0))
    assert "record no hash" in dash.unverified
    backend = Backend(model, [sae], dashboards=[feature_file(tmp_path)])
    assert "names no Neuronpedia id" in no_warning(lambda: backend.load_dashboards(0)).unverified


def test_tui_dashboard_header_shows_the_warning(model, sae, tmp_path):
    from textual.app import App

    from tinymech.tui.screens.dashboard import DashboardScreen

    dash = no_warning(lambda: Backend(model, [sae], dashboards=[folder(tmp_path / "d")]).load_dashboards(0))
    screen = DashboardScreen(dash, Backend(model, [sae]).info.saes[0], 1)

    class Host(App):
        def on_mount(self):
            self.push_screen(screen)

    async def run():
        async with Host().run_test(size=(120, 30)) as pilot:
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            return screen.query_one("#dash-header").render().plain

    import asyncio

    header = asyncio.run(run())
    assert "⚠ unverified" in header and "record no hash of their SAE's weights" in header
    assert str(tmp_path) not in header  # no path: the screen is the same wherever the files are


def test_tinymechs_own_export_imports_for_an_sae_with_a_neuronpedia_id(tmp_path):
    # regression (review): its default "layer" is the hook name, which was compared with the SAE's Neuronpedia id
    # ("synthetic/blocks.0.hook_resid_pre" against "gpt2-small/0-res-jb") and refused
    from dashboard_factory import synthetic
    from numpy_checkpoints import write_sae
    from tinymech.sae.dashboards.store import FeatureDashboards, sae_sha256, write_folder

    sae = tm.SAE.load(write_sae(tmp_path / "sae", "standard", 16, 6, hook="blocks.0.hook_resid_pre",
                                neuronpedia_id="gpt2-small/0-res-jb"))
    meta, arrays, vocab = synthetic(n_features=6)
    meta["sae_sha256"] = sae_sha256(sae)
    write_folder(tmp_path / "dash", meta, arrays, vocab, {})
    exported = tm.export_neuronpedia(FeatureDashboards.load(tmp_path / "dash", sae=sae), tmp_path / "features.json")
    dash = tm.import_neuronpedia(exported, sae=sae)
    # (review: the export dropped the folder's hash, so its own dashboards came back unverified)
    assert dash.n_features == 6 and dash.unverified is None
    other = tm.SAE.load(write_sae(tmp_path / "other", "standard", 16, 6, hook="blocks.0.hook_resid_pre", seed=1))
    with pytest.raises(tm.InvalidInputError, match="features of another SAE .its weights differ"):
        tm.import_neuronpedia(exported, sae=other)


def test_neuronpedia_numbers_a_resid_post_sae_by_the_next_layer(tmp_path):
    # regression (review): SAELens's registry maps gpt2-small/12-res-jb to blocks.11.hook_resid_post; it was refused
    import json

    from numpy_checkpoints import write_sae

    sae = tm.SAE.load(write_sae(tmp_path / "sae", "standard", 16, 6, hook="blocks.11.hook_resid_post"))
    features = [{"modelId": "gpt2-small", "layer": "12-res-jb", "index": f, "hookName": None} for f in range(2)]
    (tmp_path / "features.json").write_text(json.dumps(features))
    dash = tm.import_neuronpedia(tmp_path / "features.json", sae=sae, trust_unverified=True)
    assert "matches the SAE's layer" in dash.unverified
    features = [dict(f, layer="10-res-jb") for f in features]
    (tmp_path / "features.json").write_text(json.dumps(features))
    with pytest.raises(tm.InvalidInputError, match="layer 10 .* the SAE reads layer 11"):
        tm.import_neuronpedia(tmp_path / "features.json", sae=sae, trust_unverified=True)
