"""tm.train_sae: the run around the core's Trainer (schedules, scaling, checkpoints,
resume, saving, evaluation) and the train-sae command. No torch."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

import tinymech as tm
from tinymech import cli
from tinymech.sae import train as train_module
from tinymech.sae.sae import fold_norm_scaling
from tinymech.sae.train import TrainConfig, geometric_median
from model_factory import SHAPES
from numpy_checkpoints import write_gpt2

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-gpt2"


def dictionary_data(n=6000, d_in=24, d_sae=48, k=3, seed=0, offset=2.0):
    """Rows that are sparse sums of a random unit dictionary, plus an offset."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, d_sae), np.float32)
    codes[np.arange(n)[:, None], rng.integers(0, d_sae, (n, k))] = rng.exponential(1.0, (n, k))
    return (codes @ atoms * 3 + offset).astype(np.float32)


def small_run(x, out=None, **kw):
    args = dict(architecture="topk", d_sae=48, k=3, n_tokens=20000, batch_size=500, out=out, progress=False)
    args.update(kw)
    return tm.train_sae(x, **args)


def test_trains_and_saves_a_folder_both_readers_agree(tmp_path):
    x = dictionary_data()
    sae = small_run(x, tmp_path / "sae", n_tokens=60000, lr=3e-3)
    assert sae.metrics["explained_variance"] > 0.7
    again = tm.SAE.load(tmp_path / "sae")
    np.testing.assert_array_equal(again.encode(x[:50]), sae.encode(x[:50]))
    assert again.metrics == sae.metrics and tm.SAE.load(DEMO / "saes" / "blocks.2.hook_resid_pre").metrics["k"] == 16
    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    for key in ("l0", "explained_variance", "dead_features", "dense_features", "density_histogram",
                "tokens_per_second", "train_tokens"):
        assert key in metrics
    assert metrics["train_tokens"] == 60000
    assert abs(metrics["l0"] - 3) < 1e-9  # topk: exactly k active where k pre-activations are positive
    for file in (tmp_path / "sae").iterdir():  # safetensors made its files private to their owner
        assert file.stat().st_mode & 0o044 == 0o044, file.name
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 3 and cfg["normalize_activations"] == "none"


def test_scaling_is_folded_into_the_weights():
    """The SAE trained on scaled rows, folded, reads raw rows: same features, reconstruction scaled back."""
    x = dictionary_data() * 40.0  # far from E||x|| = sqrt(d)
    t = tm.sae.Trainer("standard", 24, 48, seed=1)
    t.set_params(b_dec=np.full(24, 0.3, np.float32), b_enc=np.linspace(-0.1, 0.1, 48, dtype=np.float32))
    s = 0.05
    raw = fold_norm_scaling(t.sae_weights(), s, s, skip=True)
    cfg = train_module._parse(dict(t.sae_config(), d_sae=48, normalize_activations="none"))
    scaled_sae, raw_sae = tm.SAE(cfg, t.sae_weights()), tm.SAE(cfg, raw)
    np.testing.assert_allclose(raw_sae.encode(x[:20]), scaled_sae.encode(x[:20] * s), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(raw_sae.forward(x[:20]), scaled_sae.forward(x[:20] * s) / s, rtol=1e-4, atol=1e-3)


def test_same_seed_same_weights_other_seed_other_weights():
    x = dictionary_data(n=3000)
    a, b, c = (small_run(x, n_tokens=6000, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.W_enc, b.W_enc)
    assert not np.array_equal(a.W_enc, c.W_enc)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    x = dictionary_data(n=3000)
    whole = small_run(x, tmp_path / "whole", n_tokens=12000, checkpoint_every=2000)

    with pytest.raises(KeyboardInterrupt):
        small_run(x, tmp_path / "cut", n_tokens=12000, checkpoint_every=2000, progress=stop_at(7000))
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "train.json").read_text())
    assert saved["tokens_done"] == 7000  # Ctrl-C saved where it stopped
    resumed = small_run(x, tmp_path / "cut", n_tokens=12000, checkpoint_every=2000, resume=True)
    np.testing.assert_array_equal(resumed.W_enc, whole.W_enc)
    np.testing.assert_array_equal(resumed.W_dec, whole.W_dec)
    assert resumed.metrics["train_tokens"] == 12000


def stop_at(tokens):
    def progress(done, total, stats):
        if done >= tokens:
            raise KeyboardInterrupt
    return progress


def test_a_finished_run_leaves_no_checkpoint(tmp_path):
    small_run(dictionary_data(n=3000), tmp_path / "sae", n_tokens=4000, checkpoint_every=1000)
    assert not (tmp_path / "sae" / "checkpoint").exists()


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    x = dictionary_data(n=3000)
    with pytest.raises(KeyboardInterrupt):
        small_run(x, tmp_path / "sae", n_tokens=4000, checkpoint_every=1000, progress=stop_at(2000))
    with pytest.raises(tm.InvalidInputError, match="d_sae"):
        small_run(x, tmp_path / "sae", n_tokens=4000, d_sae=64, checkpoint_every=1000, resume=True)


def test_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    x = dictionary_data(n=3000)
    real = train_module.save_file
    calls = []

    def save_file(arrays, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(arrays, path)

    monkeypatch.setattr(train_module, "save_file", save_file)
    with pytest.raises(tm.TrainingError, match="No space left.*previous checkpoint"):
        small_run(x, tmp_path / "sae", n_tokens=6000, checkpoint_every=2000)
    folder = tmp_path / "sae" / "checkpoint"
    info = json.loads((folder / "train.json").read_text())
    assert info["tokens_done"] == 2000 and (folder / info["state"]).is_file()
    assert not list(folder.glob("*.partial"))


@pytest.mark.parametrize("kw, match", [
    (dict(architecture="matryoshka"), "unknown architecture"),
    (dict(architecture="matching_pursuit"), "reads 'matching_pursuit' SAEs but does not train them"),
    (dict(architecture="temporal"), "reads 'temporal' SAEs but does not train them"),
    (dict(architecture="gated"), "reads 'gated' SAEs but does not train them"),
    (dict(d_sae=0), "d_sae"),
    (dict(k=49), "exceeds d_sae"),
    (dict(k=None), "needs k"),
    (dict(architecture="standard", k=3), "k is for topk"),
    (dict(lr=0.0), "lr"),
    (dict(batch_size=0), "batch_size"),
    (dict(checkpoint_every=100), "need out="),
    (dict(skip=True), "skip transcoder"),
    (dict(architecture="standard", k=None, coefficient=-1.0), "coefficient must be a finite number >= 0"),
    # topk trained the same weights whatever the coefficient (the command line refused it; the library not)
    (dict(coefficient=1000.0), "coefficient is for the SAEs with a sparsity penalty, not topk: its sparsity is k"),
    (dict(architecture="batchtopk", coefficient_warm_up_steps=5), "coefficient_warm_up_steps is for the SAEs"),
    (dict(lr_warm_up_steps=30, lr_decay_steps=20), "exceed"),
    (dict(batch_size=2**40), "exceeds the 450 training tokens"),  # it hung, building one batch of 2**40 rows
    (dict(lr_end=-1.0), "lr_end"), (dict(lr_end=float("nan")), "lr_end"), (dict(lr_end=1.0), "lr_end"),
    (dict(architecture="jumprelu", k=None, coefficient=float("inf")), "coefficient must be a finite number"),
    (dict(aux_loss_coefficient="0.5"), "aux_loss_coefficient must be a number"),
])
def test_bad_arguments_get_precise_errors(kw, match):
    with pytest.raises(tm.InvalidInputError, match=match):
        small_run(dictionary_data(n=500), n_tokens=1000, **dict(dict(batch_size=100), **kw))


def test_nan_activations_say_where():
    x = dictionary_data(n=500)
    x[123, 4] = np.nan
    with pytest.raises(tm.SAEInputError, match="NaN or infinity at row 123"):
        small_run(x, n_tokens=1000, holdout=0, b_dec_init="zeros")


@pytest.mark.parametrize("shape", [(0, 8), (10,), (5, 0)])
def test_empty_or_flat_activations_are_refused(shape):
    with pytest.raises(tm.SAEInputError):
        small_run(np.zeros(shape, np.float32), n_tokens=10)


@pytest.mark.parametrize("arch, skip, saved_as", [
    ("standard", False, "transcoder"), ("jumprelu", True, "jumprelu_skip_transcoder"),
    ("batchtopk", False, "jumprelu_transcoder"), ("topk", False, "topk_transcoder"),
])
def test_transcoders_train_from_pairs(tmp_path, arch, skip, saved_as):
    rng = np.random.default_rng(3)
    x = dictionary_data(n=2000)
    y = np.tanh(x @ rng.standard_normal((24, 16)).astype(np.float32)) * 5
    k = 3 if arch in ("topk", "batchtopk") else None
    sae = tm.train_sae((x, y), arch, d_sae=40, k=k, n_tokens=4000, batch_size=500, out=tmp_path / "tc", skip=skip,
                       progress=False)
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert cfg["architecture"] == saved_as and cfg["d_out"] == 16 and sae.d_out == 16
    assert sae.forward(x[:3]).shape == (3, 16)


def test_schedules():
    cfg = TrainConfig("standard", 8, None, 1000, 1e-3, 10, 2.0, 10, 5, 20, 0.0, False, "zeros", 0, {}, 0, "")
    assert cfg.steps == 100
    assert cfg.lr_at(0) == pytest.approx(2e-4) and cfg.lr_at(4) == pytest.approx(1e-3)
    assert cfg.lr_at(50) == 1e-3 and cfg.lr_at(80) == pytest.approx(1e-3)
    assert cfg.lr_at(99) == pytest.approx(1e-3 * 1 / 20)
    assert cfg.coefficient_at(0) == 0 and cfg.coefficient_at(5) == pytest.approx(1.0)
    assert cfg.coefficient_at(10) == cfg.coefficient_at(99) == 2.0


def test_geometric_median_resists_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal((200, 3)), np.full((20, 3), 1000.0)]).astype(np.float32)
    assert np.abs(geometric_median(x)).max() < 0.5  # the mean is near 90


def test_a_store_of_the_demo_model_trains_and_evaluates_on_held_out_text(tmp_path):
    model, store = demo_store(tmp_path)
    sae = tm.train_sae(store, "topk", d_sae=256, k=8, n_tokens=6000, batch_size=512, out=tmp_path / "sae",
                       model=model, holdout=500, progress=False)
    m = sae.metrics
    assert m["evaluated_on"] == "held-out activations" and m["n_tokens"] >= 500
    for key in ("ce_clean", "ce_sae", "ce_zero_ablation", "ce_loss_score", "delta_lm_loss"):
        assert np.isfinite(m[key])
    assert sae.cfg.hook_name == "blocks.2.hook_resid_pre" and sae.cfg.context_size == 64
    assert tm.SAE.load(tmp_path / "sae").encode(store.rows(0, 4)[0]).shape == (4, 256)


def demo_store(tmp_path, n=3000, hook="blocks.2.hook_resid_pre"):
    model = tm.load(str(DEMO))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(Path(DEMO / "MODEL_CARD.md").read_text().split("\n\n")))
    return model, tm.collect_activations(model, hook, corpus, n, out=tmp_path / "acts", context=64, progress=False)


def test_nan_in_a_store_names_the_text_row_and_position(tmp_path):
    model, store = demo_store(tmp_path, n=1000)
    _, cache = model.run_with_cache(np.asarray(store.tokens[1:2]), names_filter="blocks.2.hook_resid_pre")
    np.testing.assert_allclose(cache["blocks.2.hook_resid_pre"][0, 9], store.rows(70, 71)[0][0], rtol=1e-5)
    data = np.memmap(tmp_path / "acts" / "inputs.bin", dtype=np.float32, mode="r+", shape=(1000, 256))
    data[70, 3] = np.inf
    data.flush()
    del data
    with pytest.raises(tm.SAEInputError, match=r"token 70 of .*acts \(text row 1, position 9\)"):
        tm.train_sae(tm.ActivationStore.open(tmp_path / "acts"), "topk", d_sae=64, k=4, n_tokens=2000,
                     batch_size=1000, holdout=0, progress=False)


def test_activations_of_another_model_are_refused_for_evaluation(tmp_path):
    _, store = demo_store(tmp_path, n=1000)
    other = tm.load(str(write_gpt2(tmp_path / "other", **dict(SHAPES["tiny"], n_embd=256))))
    with pytest.raises(tm.InvalidInputError, match="collected from"):
        tm.train_sae(store, "topk", d_sae=64, k=4, n_tokens=1000, model=other, progress=False)


def test_the_train_sae_command(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("<|endoftext|>".join(Path(DEMO / "MODEL_CARD.md").read_text().split("\n\n")))
    out = tmp_path / "sae"
    status = cli.main(["train-sae", "--hook", "blocks.1.hook_resid_pre", "--corpus", str(corpus), "--arch", "topk",
                       "--d-sae", "128", "--k", "4", "--tokens", "3000", "--batch-size", "500", "--context", "64",
                       "--out", str(out)])
    assert status == 0
    assert (out / "cfg.json").is_file() and (out / "metrics.json").is_file()
    assert (tmp_path / "sae.activations" / "activations.json").is_file()
    assert "saved SAE(topk" in capsys.readouterr().out


def test_smollm2s_bundled_saes_are_found_for_it_only(tmp_path, monkeypatch):
    from tinymech.io import sources
    from tinymech.tui.app import bundled_saes

    package_models = tmp_path / "models"
    (package_models / "smollm2" / "saes" / "blocks.15.hook_resid_pre").mkdir(parents=True)
    (package_models / "smollm2" / "saes" / "blocks.15.hook_resid_pre" / "cfg.json").write_text("{}")
    monkeypatch.setattr(sources, "bundled_models_dir", lambda: package_models)
    conversion = tmp_path / "cache" / "SmolLM2-135M-Instruct.Q4_1-98362432"
    other = tmp_path / "cache" / "some-model"
    for folder in (conversion, other):
        (folder / "saes" / "own").mkdir(parents=True)
        (folder / "saes" / "own" / "cfg.json").write_text("{}")
    assert [p.name for p in bundled_saes(str(conversion))] == ["own", "blocks.15.hook_resid_pre"]
    assert [p.name for p in bundled_saes(str(other))] == ["own"]
    assert bundled_saes(None) == []
    gguf = tmp_path / "dl" / "SmolLM2-135M-Instruct.Q4_1.gguf"  # tm.load of the file itself
    assert [p.name for p in bundled_saes(str(gguf))] == ["blocks.15.hook_resid_pre"]


@pytest.mark.parametrize("extra, message", [
    (["--k", "4", "--d-sae", "2"], "--k 4 exceeds --d-sae 2"),
    ([], "--arch topk needs --k"),
    (["--k", "4", "--hook", "blocks.99.hook_resid_pre"], "unknown hook point 'blocks.99.hook_resid_pre'"),
    (["--k", "4", "--corpus", "SHORT"], "holds less than one row of 128 tokens"),
])
def test_the_train_sae_command_refuses_bad_input_in_one_line(tmp_path, capsys, extra, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((DEMO / "MODEL_CARD.md").read_text())
    (tmp_path / "short.txt").write_text("hello world")
    argv = ["train-sae", "--hook", "blocks.1.hook_resid_pre", "--corpus", str(corpus), "--tokens", "1000",
            "--out", str(tmp_path / "sae")] + [str(tmp_path / "short.txt") if a == "SHORT" else a for a in extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sae").exists()


def test_ctrl_c_inside_the_cores_step_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A real Ctrl-C lands while the core steps: the step is taken, then the interrupt surfaces.
    The checkpoint counted one step less than its state held, and the resumed run trained a batch twice."""
    x = dictionary_data(n=3000)
    whole = small_run(x, tmp_path / "whole", n_tokens=12000)
    real_step = tm.sae.Trainer.step

    def step_then_interrupt(self, *args, **kwargs):
        stats = real_step(self, *args, **kwargs)
        if self.steps == 9:
            raise KeyboardInterrupt
        return stats

    monkeypatch.setattr(tm.sae.Trainer, "step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        small_run(x, tmp_path / "cut", n_tokens=12000)
    monkeypatch.setattr(tm.sae.Trainer, "step", real_step)
    assert json.loads((tmp_path / "cut" / "checkpoint" / "train.json").read_text())["step"] == 9
    resumed = small_run(x, tmp_path / "cut", n_tokens=12000, resume=True)
    np.testing.assert_array_equal(resumed.W_enc, whole.W_enc)


@pytest.mark.parametrize("change, what", [(dict(holdout=0), "holdout"), ("data", "data")])
def test_resume_refuses_other_data_or_holdout(tmp_path, change, what):
    x = dictionary_data(n=3000)
    with pytest.raises(KeyboardInterrupt):
        small_run(x, tmp_path / "sae", n_tokens=6000, holdout=300, progress=stop_at(2000))
    kw = dict(holdout=300)
    if change == "data":
        x = x * 100 + 5
    else:
        kw.update(change)
    with pytest.raises(tm.InvalidInputError, match=what):
        small_run(x, tmp_path / "sae", n_tokens=6000, resume=True, **kw)


@pytest.mark.parametrize("damage", [
    lambda f: (f / "train.json").write_text("{not json"),
    lambda f: (f / "train.json").write_text("[1, 2]"),
    lambda f: _edit(f, state="../../hostile.safetensors"),
    lambda f: _edit(f, tokens_done="abc"),
    lambda f: _edit(f, step=999),
    lambda f: _edit(f, scale_in=-1.0),
    lambda f: next(f.glob("state-*.safetensors")).write_bytes(b"garbage"),
])
def test_a_damaged_checkpoint_is_a_training_error(tmp_path, damage):
    x = dictionary_data(n=3000)
    with pytest.raises(KeyboardInterrupt):
        small_run(x, tmp_path / "sae", n_tokens=6000, progress=stop_at(2000))
    damage(tmp_path / "sae" / "checkpoint")
    with pytest.raises(tm.TrainingError):
        small_run(x, tmp_path / "sae", n_tokens=6000, resume=True)


def _edit(folder, **fields):
    info = json.loads((folder / "train.json").read_text())
    info.update(fields)
    (folder / "train.json").write_text(json.dumps(info))


def test_numpy_options_and_stale_labels(tmp_path):
    x = dictionary_data(n=3000)
    out = tmp_path / "sae"
    out.mkdir()
    (out / "feature_labels.json").write_text('{"3": "a feature of the SAE trained here before"}')
    sae = small_run(x, out, n_tokens=3000, checkpoint_every=1000, aux_loss_coefficient=np.float32(0.5))
    assert sae.labels == {} and not (out / "feature_labels.json").exists()
    assert json.loads((out / "cfg.json").read_text())["metadata"]["tinymech_training"]["options"][
        "aux_loss_coefficient"] == 0.5


def test_a_diverging_run_stops_with_a_training_error(monkeypatch):
    real_step = tm.sae.Trainer.step
    monkeypatch.setattr(tm.sae.Trainer, "step", lambda self, *a, **k: dict(real_step(self, *a, **k), loss=float("nan")))
    with pytest.raises(tm.TrainingError, match="diverged"):
        small_run(dictionary_data(n=3000), n_tokens=3000)


# ---- what out already holds, and what out can be (found in review) ----

def interrupted(x, out, tokens=2000, **kw):
    """A run of 6000 tokens in batches of 500, stopped by Ctrl-C after `tokens`: its checkpoint is in out."""
    with pytest.raises(KeyboardInterrupt):
        small_run(x, out, n_tokens=6000, checkpoint_every=1000, progress=stop_at(tokens), **kw)
    return json.loads((out / "checkpoint" / "train.json").read_text())


def test_a_rerun_without_resume_keeps_the_interrupted_runs_checkpoint(tmp_path):
    """The rerun's first checkpoint deleted the interrupted run's state: its steps were lost without a word."""
    x = dictionary_data(n=3000)
    saved = interrupted(x, tmp_path / "sae")
    with pytest.raises(tm.InvalidInputError, match=r"checkpoint of an interrupted run \(step 4, 2,000 tokens\).*"
                                                   r"resume=True \(--resume\).*another out"):
        small_run(x, tmp_path / "sae", n_tokens=6000, checkpoint_every=1000)
    assert json.loads((tmp_path / "sae" / "checkpoint" / "train.json").read_text()) == saved
    assert (tmp_path / "sae" / "checkpoint" / saved["state"]).is_file()
    resumed = small_run(x, tmp_path / "sae", n_tokens=6000, checkpoint_every=1000, resume=True)
    assert resumed.metrics["train_tokens"] == 6000


def test_overwrite_starts_over_in_place_of_a_checkpoint(tmp_path):
    x = dictionary_data(n=3000)
    interrupted(x, tmp_path / "sae")
    whole = small_run(x, tmp_path / "whole", n_tokens=6000, seed=3)
    again = small_run(x, tmp_path / "sae", n_tokens=6000, seed=3, overwrite=True)
    np.testing.assert_array_equal(again.W_enc, whole.W_enc)
    assert not (tmp_path / "sae" / "checkpoint").exists()


def test_resume_after_a_finished_run_is_refused(tmp_path):
    """resume=True over a finished SAE (no checkpoint) trained it again from scratch, over the finished one."""
    x = dictionary_data(n=3000)
    out = tmp_path / "sae"
    small_run(x, out, n_tokens=3000)
    before = (out / "sae_weights.safetensors").read_bytes()
    with pytest.raises(tm.InvalidInputError, match="holds a finished SAE .* no checkpoint: nothing to resume.*overwrite=True"):
        small_run(x, out, n_tokens=3000, resume=True)
    assert (out / "sae_weights.safetensors").read_bytes() == before
    small_run(x, out, n_tokens=3000, seed=1, resume=True, overwrite=True)  # told to: a new run in its place
    assert (out / "sae_weights.safetensors").read_bytes() != before


@pytest.mark.parametrize("existing", ["cfg.json", "sae_weights.safetensors"])
def test_an_sae_in_out_is_replaced_only_with_overwrite(tmp_path, existing):
    out = tmp_path / "sae"
    out.mkdir()
    (out / existing).write_text('{"mine": 1}')
    with pytest.raises(tm.InvalidInputError, match=f"already holds an SAE \\({existing}\\).*overwrite=True"):
        small_run(dictionary_data(n=3000), out, n_tokens=3000)
    assert (out / existing).read_text() == '{"mine": 1}' and sorted(p.name for p in out.iterdir()) == [existing]
    small_run(dictionary_data(n=3000), out, n_tokens=3000, overwrite=True)
    assert tm.SAE.load(out).d_sae == 48


def test_check_out_refuses_as_train_sae_does_without_writing(tmp_path):
    """For the train-sae command, which collects activations (minutes) before it trains."""
    from tinymech.sae.train import check_out

    assert check_out(None) is None
    assert check_out(tmp_path / "new" / "sae") == tmp_path / "new" / "sae" and not (tmp_path / "new").exists()
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text("{}")
    with pytest.raises(tm.InvalidInputError, match="already holds an SAE"):
        check_out(tmp_path / "sae")
    with pytest.raises(tm.InvalidInputError, match="nothing to resume"):
        check_out(str(tmp_path / "sae"), resume=True)
    assert check_out(tmp_path / "sae", overwrite=True) == tmp_path / "sae"


def test_an_empty_out_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """out="" wrote the SAE into the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(tm.InvalidInputError, match='out="" names no folder'):
        small_run(dictionary_data(n=3000), "", n_tokens=3000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["file", "file/sub", "/dev/null"])
def test_an_out_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch, where):
    """The whole run trained, then died with a bare NotADirectoryError: the weights were lost."""
    (tmp_path / "file").write_text("precious")
    monkeypatch.setattr(tm.sae.Trainer, "step", lambda *a, **k: pytest.fail("trained before refusing out"))
    with pytest.raises(tm.InvalidInputError, match="a file, not a folder"):
        small_run(dictionary_data(n=3000), tmp_path / where if where != "/dev/null" else where, n_tokens=3000)
    assert (tmp_path / "file").read_text() == "precious"


def test_a_checkpoint_folder_that_cannot_be_made_is_a_training_error(tmp_path):
    out = tmp_path / "sae"
    out.mkdir()

    def block_the_checkpoint(done, total, stats):
        (out / "checkpoint").write_text("in the way")  # mkdir of out/checkpoint fails: FileExistsError

    with pytest.raises(tm.TrainingError, match="could not write a checkpoint"):
        small_run(dictionary_data(n=3000), out, n_tokens=3000, checkpoint_every=1000, progress=block_the_checkpoint)


# ---- memory, options, Ctrl-C (found in review) ----

def test_a_run_beyond_the_machine_s_memory_is_refused_before_allocating(tmp_path):
    """d_sae=2**31-1 at d_in=24 zero-filled terabytes: a bare MemoryError (bad_alloc), or the OOM killer."""
    with pytest.raises(tm.InvalidInputError, match=r"would need [\d.]+ GiB, more than this machine's.*smaller d_sae"):
        small_run(dictionary_data(n=3000), tmp_path / "sae", n_tokens=3000, d_sae=2**31 - 1)
    assert not (tmp_path / "sae").exists()


def test_the_memory_estimate_counts_the_batch(monkeypatch):
    from tinymech import runtime
    from tinymech.sae import trainer

    weights = trainer.training_memory("topk", 24, 48, k=3)
    assert trainer.training_memory("topk", 24, 48, k=3, batch_size=500) > weights > 24 * 48 * 2 * 16  # + grads, Adam
    monkeypatch.setattr(runtime, "physical_memory", lambda: weights + 1)  # the trainer fits, its steps do not
    with pytest.raises(tm.InvalidInputError, match="smaller d_sae or batch_size"):
        small_run(dictionary_data(n=3000), n_tokens=3000)


@pytest.mark.parametrize("option, value, match", [
    ("topk_threshold_lr", -1.0, r"in \[0, 1\]"), ("topk_threshold_lr", 5.0, r"in \[0, 1\]"),
    ("jumprelu_init_threshold", -1.0, ">= 0"), ("max_grad_norm", 0.0, "> 0, or None for no clipping"),
    ("max_grad_norm", -1.0, "> 0"), ("decoder_init_norm", 0.0, "> 0, or None"), ("decoder_init_norm", -1.0, "> 0"),
    ("aux_loss_coefficient", -1.0, ">= 0"),
])
def test_out_of_range_options_are_refused_before_out_is_touched(tmp_path, option, value, match):
    out = tmp_path / "sae"
    with pytest.raises(tm.InvalidInputError, match=f"{option} must be {match}"):
        small_run(dictionary_data(n=3000), out, n_tokens=3000, architecture="batchtopk", **{option: value})
    assert not out.exists()


def test_none_options_train_and_are_saved(tmp_path):
    sae = small_run(dictionary_data(n=3000), tmp_path / "sae", n_tokens=3000, max_grad_norm=None,
                    decoder_init_norm=None)
    options = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["tinymech_training"]["options"]
    assert options["max_grad_norm"] is None and options["decoder_init_norm"] is None and sae.d_sae == 48


def test_ctrl_c_after_the_cores_step_returned_resumes(tmp_path, monkeypatch):
    """Ctrl-C between the core's step returning and the loop counting it saved step 8 beside a state of 9
    steps, and resume refused the checkpoint."""
    import math
    import types

    x = dictionary_data(n=3000)
    whole = small_run(x, tmp_path / "whole", n_tokens=12000)
    calls = []

    def isfinite(value):  # the loss check right after the step: its 10th call follows step 9
        calls.append(value)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return math.isfinite(value)

    monkeypatch.setattr(train_module, "math", types.SimpleNamespace(**dict(vars(math), isfinite=isfinite)))
    with pytest.raises(KeyboardInterrupt):
        small_run(x, tmp_path / "cut", n_tokens=12000)
    monkeypatch.undo()
    saved = json.loads((tmp_path / "cut" / "checkpoint" / "train.json").read_text())
    assert saved["step"] == 9 and saved["tokens_done"] == 4500
    resumed = small_run(x, tmp_path / "cut", n_tokens=12000, resume=True)
    np.testing.assert_array_equal(resumed.W_enc, whole.W_enc)


def test_a_checkpoint_that_spelled_no_clipping_as_0_resumes(tmp_path):
    # max_grad_norm=0 (and decoder_init_norm <= 0) turned them off before; now None does and 0 is
    # refused, so an older checkpoint could not be resumed at all
    x = dictionary_data(n=3000)
    whole = small_run(x, tmp_path / "whole", n_tokens=6000, max_grad_norm=None, decoder_init_norm=None)
    saved = interrupted(x, tmp_path / "sae", max_grad_norm=None, decoder_init_norm=None)
    saved["config"]["options"].update(max_grad_norm=0.0, decoder_init_norm=-1.0)  # as the older version wrote it
    (tmp_path / "sae" / "checkpoint" / "train.json").write_text(json.dumps(saved))
    resumed = small_run(x, tmp_path / "sae", n_tokens=6000, checkpoint_every=1000, resume=True, max_grad_norm=None,
                        decoder_init_norm=None)
    np.testing.assert_array_equal(resumed.W_enc, whole.W_enc)


def test_a_topk_checkpoint_saved_with_a_coefficient_resumes(tmp_path):
    # topk took a coefficient it never used before; refused now, its checkpoint could not be resumed
    x = dictionary_data(n=3000)
    whole = small_run(x, tmp_path / "whole", n_tokens=6000)
    saved = interrupted(x, tmp_path / "sae")
    saved["config"].update(coefficient=1000.0, coefficient_warm_up_steps=3)  # as the older version wrote it
    (tmp_path / "sae" / "checkpoint" / "train.json").write_text(json.dumps(saved))
    resumed = small_run(x, tmp_path / "sae", n_tokens=6000, checkpoint_every=1000, resume=True)
    np.testing.assert_array_equal(resumed.W_enc, whole.W_enc)


def test_a_damaged_train_json_is_described_not_raised(tmp_path):
    # a step of 1e400 (OverflowError) or deep nesting (RecursionError) escaped every train_sae into out
    x = dictionary_data(n=3000)
    interrupted(x, tmp_path / "sae")
    info = tmp_path / "sae" / "checkpoint" / "train.json"
    for text in ('{"step": 1e400, "tokens_done": 1}', '{"a": ' + "[" * 100000 + "]" * 100000 + "}"):
        info.write_text(text)
        with pytest.raises(tm.InvalidInputError, match="train.json, which cannot be read"):
            small_run(x, tmp_path / "sae", n_tokens=6000)


def test_a_checkpoint_state_that_is_a_fifo_is_refused_not_waited_on(tmp_path):
    # safetensors' load_file blocked on it with the GIL held: the whole process hung
    import os
    import textwrap

    from fresh_process import run_python

    x = dictionary_data(n=3000)
    saved = interrupted(x, tmp_path / "sae")
    state = tmp_path / "sae" / "checkpoint" / saved["state"]
    state.unlink()
    os.mkfifo(state)
    np.save(tmp_path / "x.npy", x)
    res = run_python(textwrap.dedent(f"""
        import numpy as np, tinymech as tm
        x = np.load({str(tmp_path / "x.npy")!r})
        try:
            tm.train_sae(x, "topk", d_sae=48, k=3, n_tokens=6000, batch_size=500, out={str(tmp_path / "sae")!r},
                         checkpoint_every=1000, resume=True, progress=False)
        except tm.TinymechError as e:
            print(type(e).__name__, e)
    """), timeout=60)
    assert "TrainingError" in res.stdout and "not a regular file" in res.stdout, res.stdout + res.stderr
