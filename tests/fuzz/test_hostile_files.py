"""Hostile or broken model files (issue 19): each gets a precise tinymech
error, never a hang, a foreign exception, a crash, or a model that loads but
computes something else."""
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tinymech as tm
from llama_factory import LLAMA_SHAPES, make_hf_llama
from model_factory import SHAPES, make_hf_gpt2, save_tokenizer
from tinymech.io import files
from tinymech.cli import main
from tinymech.arch.families import config_from_hf
from tinymech.sae.sae import SAE
from tinymech.errors import SAENotFoundError

HERE = os.path.dirname(__file__)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    make_hf_gpt2(path, **SHAPES["tiny"])
    save_tokenizer(path, SHAPES["tiny"]["vocab_size"])
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    make_hf_llama(path, **LLAMA_SHAPES["mqa_llama3"])
    return path


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharded")
    make_hf_llama(path, max_shard_size="20KB", **LLAMA_SHAPES["gqa"])
    return path


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory):
    from gguf_factory import make_tiny_gguf

    return make_tiny_gguf(tmp_path_factory.mktemp("gguf")).parent


def copy(src, tmp_path, name="m"):
    return shutil.copytree(src, tmp_path / name)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---- config.json: every field checked before it is used ----------------------------------------

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16, "rope_theta": 500.0}


@pytest.mark.parametrize("model,changes,match", [
    # a context too long for memory (the KV cache size would overflow in the core)
    ("llama", dict(max_position_embeddings=2**61), r"max_position_embeddings=2305843009213693952 exceeds 2\^31 - 1"),
    ("llama", dict(max_position_embeddings=2**30, num_hidden_layers=10**6),
     r"max_position_embeddings=1073741824 is more context than memory can hold: .* limit for this model is \d+ "),
    ("gpt2", dict(n_positions=2**40), "n_positions=1099511627776 exceeds"),
    ("gpt2", dict(n_layer=0), "n_layer must be >= 1"),
    ("gpt2", dict(n_head=2.0), "n_head must be a whole number"),
    ("gpt2", dict(vocab_size=True), "vocab_size must be a whole number"),
    ("gpt2", dict(n_embd=2**40), "n_embd=1099511627776 exceeds"),
    ("gpt2", dict(n_inner=-4), "n_inner must be >= 1"),
    ("gpt2", dict(n_head=5), "n_embd=64 is not divisible by n_head=5"),
    ("llama", dict(num_key_value_heads=2), "num_attention_heads=3 is not a multiple of num_key_value_heads=2"),
    ("llama", dict(head_dim=23), "head_dim=23 is odd"),
    ("gpt2", dict(architectures=7), "architectures must be a list of names, got 7"),
    ("llama", dict(architectures=[None]), "architectures must be a list"),
    ("gpt2", dict(layer_norm_epsilon="1e-5"), "layer_norm_epsilon must be a non-negative finite number"),
    ("gpt2", dict(bos_token_id=1.5), "bos_token_id must be a whole number, not 1.5"),
    ("gpt2", dict(eos_token_id=-1), "eos_token_id must be >= 0"),
    ("gpt2", dict(bos_token_id=257), "bos_token_id=257 is outside the vocabulary of 257 tokens"),
    ("llama", dict(chat_template=["x"]), "chat_template must be a string"),
    # RoPE parameters that raised foreign errors or silently broke the model
    ("llama", dict(rope_parameters=None, rope_scaling="linear"), "rope_scaling must be an object, got 'linear'"),
    ("llama", dict(rope_parameters={"rope_type": "linear", "factor": "x"}), r"rope_parameters.factor must .* 'x'"),
    ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 0}), r"rope_parameters.factor must be a positive"),
    ("llama", dict(rope_parameters={"rope_type": "linear"}), r"rope_parameters.factor must be .* got None"),
    ("llama", dict(rope_parameters=dict(LLAMA3, original_max_position_embeddings=0)),
     "original_max_position_embeddings must be >= 1"),
    ("llama", dict(rope_parameters=dict(LLAMA3, high_freq_factor=1.0)), "high_freq_factor=1.0 must exceed"),
    ("llama", dict(rope_parameters=dict(LLAMA3, rope_theta=-1)), "rope_theta must be a positive"),
    # positive, but its rotary frequencies overflow float32: the model loaded and gave NaN logits
    ("llama", dict(rope_parameters=dict(LLAMA3, rope_theta=1e-300)), "frequencies that are not finite"),
])
def test_bad_config_fields(gpt2_dir, llama_dir, tmp_path, model, changes, match):
    d = copy(gpt2_dir if model == "gpt2" else llama_dir, tmp_path)
    edit_json(d / "config.json", lambda c: c.update(changes))
    with pytest.raises(tm.ModelLoadError, match=match):
        tm.load(d)


@pytest.mark.parametrize("field,value", [("rope_theta", float("nan")), ("rope_theta", float("inf")),
                                         ("rms_norm_eps", float("nan"))])
def test_non_finite_numbers_are_refused(llama_dir, field, value):
    """JSON has no NaN (the reader refuses it), but a GGUF's float metadata can hold one."""
    hf = json.loads((llama_dir / "config.json").read_text())
    hf.pop("rope_parameters")
    hf[field] = value
    with pytest.raises(tm.ModelLoadError, match=f"{field} must be a .*finite number"):
        config_from_hf(hf)


def test_gguf_context_length_is_capped(gguf_files, tmp_path):
    import transformers

    from gguf_factory import write_gguf

    hf = transformers.LlamaForCausalLM.from_pretrained(gguf_files / "hf")
    hf.config.max_position_embeddings = 2**32 - 1  # GGUF stores it as uint32
    write_gguf(tmp_path / "long.gguf", hf, gguf_files / "tokenizer.json")
    with pytest.raises(tm.ModelLoadError, match=r"long.gguf's metadata: max_position_embeddings=4294967295 exceeds"):
        tm.load(tmp_path / "long.gguf")


# ---- JSON readers: limits, and nothing but tinymech errors ---------------------------------------

@pytest.mark.parametrize("text,match", [
    pytest.param('{"n_layer": ' + "9" * 5000 + "}", "an integer of 5000 digits", id="huge-int"),
    pytest.param("[" * 100_000 + "]" * 100_000, "nests too deeply", id="deep"),
    pytest.param('{"n_layer": NaN}', "NaN, which is not a number JSON allows", id="nan"),
    pytest.param('{"n_layer": 1e999}', "overflows a float", id="inf"),
    pytest.param("[1, 2]", "does not hold an object", id="list"),
    pytest.param(b'{"a": "\xff"}', "not UTF-8", id="latin1"),
])
def test_bad_config_json(gpt2_dir, tmp_path, text, match):
    d = copy(gpt2_dir, tmp_path)
    (d / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(tm.ModelLoadError, match=match):
        tm.load(d)


def test_oversized_json_is_not_read(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 100)
    with pytest.raises(tm.ModelLoadError, match="is larger than 100 bytes"):
        tm.load(gpt2_dir)


def test_unreadable_config(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path)
    (d / "config.json").unlink()
    (d / "config.json").symlink_to("/proc/self/mem")  # a regular file whose first read fails, even for root
    with pytest.raises(tm.ModelLoadError, match="cannot read .*config.json"):
        tm.load(d)
    (d / "config.json").unlink()
    (d / "config.json").mkdir()
    with pytest.raises(tm.ModelLoadError, match="config.json is not a regular file"):
        tm.load(d)


def test_safetensors_metadata_must_be_an_object(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path)
    path = d / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    for metadata in ([1], "x", 5):
        header["__metadata__"] = metadata
        new = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
        with pytest.raises(tm.ModelLoadError, match="__metadata__ is not an object"):
            tm.load(d)


@pytest.mark.parametrize("weight_map,match", [
    ([], "weight_map is not an object"),
    (None, "weight_map is not an object"),
    ({"lm_head.weight": 5}, "must be a file name, not 5"),
])
def test_bad_safetensors_index(sharded_dir, tmp_path, weight_map, match):
    d = copy(sharded_dir, tmp_path)
    edit_json(d / "model.safetensors.index.json", lambda i: i.update(weight_map=weight_map))
    with pytest.raises(tm.ModelLoadError, match=match):
        tm.load(d)


def test_empty_name_is_not_the_current_directory(gpt2_dir, monkeypatch):
    monkeypatch.chdir(gpt2_dir)  # a model is here, but "" does not name it
    with pytest.raises(tm.ModelNotFoundError, match="an empty name is no model"):
        tm.load("")


@pytest.mark.parametrize("name", ["\x1b]0;pwned\x07.safetensors", "shard\r.safetensors", "\u202etxt.safetensors"])
def test_shard_names_that_would_drive_a_terminal_are_refused(sharded_dir, tmp_path, name):
    # the name reached error messages raw ("... listed in the index is missing", "corrupt ...")
    d = copy(sharded_dir, tmp_path)
    edit_json(d / "model.safetensors.index.json", lambda i: i["weight_map"].update(dict.fromkeys(i["weight_map"], name)))
    (d / name).write_bytes(b"corrupt")
    with pytest.raises(tm.ModelLoadError, match="holds control or bidirectional-override characters") as e:
        tm.load(d)
    assert not any(c in str(e.value) for c in "\x1b\x07\r\u202e")


# ---- names read from files stay inside their folder ---------------------------------------------

@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/../../outside.safetensors", "{outside}",
                                  "..\\outside.safetensors", "C:\\outside.safetensors"])
def test_shard_names_stay_in_the_model_directory(sharded_dir, tmp_path, name):
    d = copy(sharded_dir, tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    outside = shutil.copy(d / index["weight_map"][first], tmp_path / "outside.safetensors")
    index["weight_map"][first] = name.format(outside=outside)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(tm.ModelLoadError, match="leads outside"):
        tm.load(d)


def fake_hub_cache(root, repo_id, snapshot, ref):
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / snapshot).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(ref)
    return repo


def test_cached_ref_stays_in_snapshots(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy(gpt2_dir, tmp_path, "elsewhere")  # what refs/main points at
    fake_hub_cache(tmp_path / "hub", "someone/model", "abc123", "../../../../elsewhere")
    with pytest.raises(tm.ModelLoadError, match="leads outside"):
        tm.load("someone/model")


@pytest.mark.parametrize("sae_id", ["../../elsewhere", "/etc", "a/../../b"])
def test_sae_folder_stays_in_the_repository(tmp_path, monkeypatch, sae_id):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fake_hub_cache(tmp_path / "hub", "someone/saes", "abc123", "abc123")
    with pytest.raises(SAENotFoundError, match="leads outside someone/saes"):
        SAE.from_pretrained("someone/saes", sae_id)


# ---- tokenizers: sections that change every prompt, and panics ------------------------------------

def test_tokenizer_padding_and_truncation_are_ignored(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path)
    text = "The cat sat on the mat. The dog sat on the log."
    want = tm.load(gpt2_dir).to_tokens(text)

    def hostile(t):
        t["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
        t["padding"] = {"strategy": {"Fixed": 10**7}, "direction": "Right", "pad_to_multiple_of": None,
                        "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}

    edit_json(d / "tokenizer.json", hostile)
    model = tm.load(d)
    np.testing.assert_array_equal(model.to_tokens(text), want)
    assert model.to_tokens("hi").shape[1] < 5


def test_gguf_merge_into_a_missing_token(gguf_files, tmp_path):
    import transformers

    from gguf_factory import write_gguf

    tok = json.loads((gguf_files / "tokenizer.json").read_text())
    first = tok["model"]["merges"][0]
    a, b = first if isinstance(first, list) else first.split()
    tok["model"]["vocab"]["renamed"] = tok["model"]["vocab"].pop(a + b)
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    hf = transformers.LlamaForCausalLM.from_pretrained(gguf_files / "hf")
    write_gguf(tmp_path / "m.gguf", hf, tmp_path / "tokenizer.json")
    with pytest.raises(tm.ModelLoadError, match=f"make no tokenizer: '{a} {b}' is not a merge"):
        tm.load(tmp_path / "m.gguf")


def charsmap(trie_bytes: int, body: bytes = b"") -> str:
    import base64

    return base64.b64encode(struct.pack("<I", trie_bytes) + body).decode()


def precompiled(encoded) -> dict:
    return {"type": "Sequence", "normalizers": [{"type": "Precompiled", "precompiled_charsmap": encoded}]}


@pytest.mark.parametrize("encoded", [charsmap(0x7FFFFFFF, b"x" * 20), charsmap(8), "!!!", None, 5])
def test_precompiled_charsmap_is_checked(gpt2_dir, tmp_path, encoded):
    d = copy(gpt2_dir, tmp_path)
    edit_json(d / "tokenizer.json", lambda t: t.update(normalizer=precompiled(encoded)))
    with pytest.raises(tm.ModelLoadError, match="precompiled_charsmap is corrupt"):
        tm.load(d)


def test_precompiled_spelled_with_escapes_is_checked_too(gpt2_dir, tmp_path):
    d = copy(gpt2_dir, tmp_path)
    edit_json(d / "tokenizer.json", lambda t: t.update(normalizer=precompiled(charsmap(0x7FFFFFFF, b"x" * 20))))
    path = d / "tokenizer.json"
    path.write_text(path.read_text().replace('"Precompiled"', '"\\u0050recompiled"'))
    with pytest.raises(tm.ModelLoadError, match="precompiled_charsmap is corrupt"):
        tm.load(d)


def test_tokenizer_panic_is_a_load_error(gpt2_dir, tmp_path):
    """A charsmap of sound length but garbage inside makes the tokenizers library panic on use."""
    d = copy(gpt2_dir, tmp_path)
    edit_json(d / "tokenizer.json", lambda t: t.update(normalizer=precompiled(charsmap(4, b"abcd"))))
    model = tm.load(d)
    with pytest.raises(tm.ModelLoadError, match="failed to encode: the tokenizers library failed"):
        model.to_tokens("hello")


def run_python(script: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """script in a fresh interpreter that imports this tree's tinymech (a hang fails the test, not the run)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), RUST_BACKTRACE="0")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=HERE)


def test_charsmap_claiming_too_much_does_not_abort_under_a_memory_limit(gpt2_dir, tmp_path):
    """The tokenizers library allocates what the charsmap's header claims (16 GiB here); under an
    address-space limit that allocation fails, and Rust aborts the process."""
    d = copy(gpt2_dir, tmp_path)
    edit_json(d / "tokenizer.json", lambda t: t.update(
        normalizer={"type": "Precompiled", "precompiled_charsmap": charsmap(0xFFFFFFF0, b"x" * 64)}))
    res = run_python(f"""
        import resource
        import tinymech as tm
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
        try:
            tm.load({str(d)!r})
        except tm.ModelLoadError as e:
            print("refused:", e)
    """)
    assert res.returncode == 0 and "precompiled_charsmap is corrupt" in res.stdout, res.stderr[-2000:]


# ---- only regular files are opened: a FIFO would block forever ----------------------------------

def test_fifos_are_refused_not_waited_on(gpt2_dir, sharded_dir, gguf_files, tmp_path):
    cases = {"config.json": gpt2_dir, "model.safetensors": gpt2_dir, "tokenizer.json": gpt2_dir,
             "model.safetensors.index.json": sharded_dir, "model-00003-of-00016.safetensors": sharded_dir}
    dirs = {}
    for name, src in cases.items():
        d = dirs[name] = copy(src, tmp_path, name.replace(".", "_"))
        assert (d / name).exists()
        (d / name).unlink()
        os.mkfifo(d / name)
    os.mkfifo(tmp_path / "fifo.gguf")
    dirs["fifo.gguf"] = tmp_path / "fifo.gguf"
    paths = {name: str(d) for name, d in dirs.items()}
    res = run_python(f"""
        import tinymech as tm
        for name, path in {paths!r}.items():
            print(name, end=": ", flush=True)  # which one hung, if one does
            try:
                tm.load(path)
                print("loaded")
            except tm.TinymechError as e:
                print(type(e).__name__, e)
    """)
    lines = res.stdout.splitlines()
    assert len(lines) == len(dirs), res.stdout + res.stderr
    for line in lines:
        assert "ModelLoadError" in line and "is not a regular file" in line, line


def test_sae_and_dynamics_fifos_are_refused(tmp_path):
    from sae_factory import lens_sae, save_lens

    for name in ("cfg.json", "sae_weights.safetensors", "feature_labels.json"):
        d = save_lens(lens_sae("standard", 8, 16, hook="blocks.0.hook_resid_post"), tmp_path / name)
        (d / name).unlink(missing_ok=True)
        os.mkfifo(d / name)
    (tmp_path / "dyn").mkdir()
    os.mkfifo(tmp_path / "dyn" / "training_dynamics.json")
    res = run_python(f"""
        import warnings
        import tinymech as tm
        from tinymech.cli import main
        from tinymech.sae.sae import SAE
        warnings.simplefilter("ignore")
        for name in ("cfg.json", "sae_weights.safetensors", "feature_labels.json"):
            print(name, end=": ", flush=True)
            try:
                print(SAE.load({str(tmp_path)!r} + "/" + name).d_sae)
            except tm.TinymechError as e:
                print(type(e).__name__, e)
        print("dynamics:", main(["dynamics", "-m", {str(tmp_path / "dyn")!r}]))
    """)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("cfg.json: SAE") and lines[1].startswith("sae_weights.safetensors: SAE"), lines
    assert lines[2] == "feature_labels.json: 16" and lines[3] == "dynamics: 2", lines


# ---- training_dynamics.json --------------------------------------------------------------------

@pytest.mark.parametrize("content", [
    "{oops", "[]", '{"records": 5}', '{"records": []}', '{"records": [{"step": 1}]}',
    '{"records": [{"step": "x", "train_loss": 1, "val_loss": 1, "rep_loss_first_half": 1, '
    '"rep_loss_second_half": 1, "induction_score": [[1]], "prev_token_score": [[1]]}]}',
    '{"records": [{"step": 1, "train_loss": 1, "val_loss": 1, "rep_loss_first_half": 1, '
    '"rep_loss_second_half": 1, "induction_score": [1, 2], "prev_token_score": [[1]]}]}',
])
def test_malformed_training_dynamics(tmp_path, capsys, content):
    (tmp_path / "training_dynamics.json").write_text(content)
    assert main(["dynamics", "--model", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("tinymech: error:") and "training_dynamics.json" in captured.err


@pytest.mark.parametrize("steps, losses, grid", [
    ((-1e308, 1e308), (1.0, 1.0), [[0.5]]),
    ((0, 1), (-1e308, 1e308), [[0.5]]),
    ((0, 1), (1.0, 1.0), [[1e308, -1e308]]),
])
def test_training_dynamics_spanning_the_doubles_still_plot(tmp_path, capsys, steps, losses, grid):
    # finite but huge: the plot's spread overflowed to inf, and an IndexError came out as a traceback
    records = [{"step": s, "train_loss": v, "val_loss": v, "rep_loss_first_half": v, "rep_loss_second_half": v,
                "induction_score": grid, "prev_token_score": grid} for s, v in zip(steps, losses)]
    (tmp_path / "training_dynamics.json").write_text(json.dumps({"records": records}))
    assert main(["dynamics", "--model", str(tmp_path)]) == 0
    assert "•" in capsys.readouterr().out
