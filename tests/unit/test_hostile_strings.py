"""Strings from files on their way to a terminal, and SAELens's release registry
damaged: printable() leaves no character that breaks or reorders a line, and every
malformed registry (pretrained_saes.yaml) is a precise SAELoadError, its strings
shown harmlessly."""

from __future__ import annotations

import json
import unicodedata

import pytest

import tinymech as tm
from tinymech.errors import SAELoadError, SAENotFoundError
from tinymech.sae import pretrained
from tinymech.text import printable

# ---- printable ----------------------------------------------------------------------------------------------

# what is kept of Unicode's format characters (Cf), and why: none breaks or reorders a line
SOFT_HYPHEN = [0x00AD]  # at most a visible hyphen
NUMBER_SIGNS = [*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x110BD, 0x110CD]  # shown as signs
SCRIPT_LAYOUT = [0x180E, *range(0x13430, 0x13440), *range(0x1BCA0, 0x1BCA4), *range(0x1D173, 0x1D17B)]
ZERO_WIDTH = [0x200B, 0x200C, 0x200D, *range(0x2060, 0x2065), 0xFEFF]  # (non-)joiners and invisibles
ANNOTATIONS_AND_TAGS = [*range(0xFFF9, 0xFFFC), 0xE0001, *range(0xE0020, 0xE0080)]  # tags: emoji subdivision flags
KEPT_FORMAT = {*SOFT_HYPHEN, *NUMBER_SIGNS, *SCRIPT_LAYOUT, *ZERO_WIDTH, *ANNOTATIONS_AND_TAGS, 0x200E, 0x200F, 0x061C}


def test_printable_maps_line_and_paragraph_separators():
    for ch in "\u2028\u2029":
        assert printable(f"a{ch}b") == "a\ufffdb"
        assert printable(f"a{ch}b", keep="") == "a\ufffdb"
    # no character that str.splitlines (and a terminal) breaks a line at survives, but a kept newline
    breaks = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1]
    assert "\u2028" in breaks and "\x85" in breaks
    for ch in breaks:
        assert len(printable(f"a{ch}b", keep="").splitlines()) == 1, hex(ord(ch))


def test_printable_maps_every_bidirectional_control():
    explicit = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
    controls = [c for c in range(0x110000) if unicodedata.bidirectional(chr(c)) in explicit]
    for c in [*controls, *range(0x206A, 0x2070)]:  # + the digit/shape switches
        assert printable(chr(c)) == "\ufffd", hex(c)


def test_printable_keeps_the_bidi_marks_real_text_uses():
    # regression (review): they were mapped, mangling Hebrew, Arabic and Persian text; a mark reorders no more
    # than a letter of its direction does ("\u200f1 2" and "\u05d01 2" show alike)
    for text in ("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645 (\u06f1\u06f4)\u200f.", "\u05e9\u05dc\u05d5\u05dd\u200f!",
                 "\u0627\u0644\u0639\u062f\u062f \u061c-5", "He said \u05e9\u05dc\u05d5\u05dd\u200e."):
        assert printable(text) == text
    assert unicodedata.bidirectional("\u200f") == unicodedata.bidirectional("\u05d0") == "R"


def test_printable_keeps_what_no_line_breaks_or_reorders():
    ordinary = "עברית العربية 👩\u200d👩\u200d👧 می\u200cخواهم soft\u00adhyphen a\u200bb \u2060\ufeff"
    assert printable(ordinary) == ordinary
    assert (
        printable("\u0600١٢٣ 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f")
        == "\u0600١٢٣ 🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    )  # number sign, England's flag
    # every other format or separator character is mapped: the kept ones are a decision, listed above
    passed = {
        c
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Cf", "Zl", "Zp") and printable(chr(c), keep="") == chr(c)
    }
    assert passed <= KEPT_FORMAT, sorted(hex(c) for c in passed - KEPT_FORMAT)


# ---- SAELens's release registry -----------------------------------------------------------------------------

GOOD = """\
other-release:
  repo_id: someone/other
  saes:
  - id: x
    path: x
my-release:
  conversion_func: null
  model: gpt2
  repo_id: someone/my-saes
  config_overrides:
    model_from_pretrained_kwargs:
      center_writing_weights: true
  links: {model: https://example.org}
  saes:
  - id: blocks.3.hook_resid_pre
    path: layer3/res
    l0: 12.5
    neuronpedia: gpt2-small/3-res-jb
    norm_scaling_factor: 1.5
  - id: layer_0
    path: 0
# a comment
last-release:
  repo_id: someone/last
  saes: []
"""


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """write(text): the registry SAE.from_pretrained reads (sae_lens need not be installed)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "pretrained_saes.yaml"
    monkeypatch.setattr(pretrained, "registry_path", lambda: path)

    def write(text: str | bytes):
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return write


def test_registry_entry_resolves(registry):
    registry(GOOD)
    repo, folder, overrides, factor = pretrained.locate("my-release", "blocks.3.hook_resid_pre")
    assert (repo, folder, factor) == ("someone/my-saes", "layer3/res", 1.5)
    assert overrides == {
        "model_from_pretrained_kwargs": {"center_writing_weights": True},
        "neuronpedia_id": "gpt2-small/3-res-jb",
    }
    assert pretrained.locate("my-release", "layer_0")[1] == "0"  # SAELens's registry has such integer paths
    with pytest.raises(SAENotFoundError, match="has no SAE 'nope'; its ids are: blocks.3.hook_resid_pre, layer_0"):
        pretrained.locate("my-release", "nope")
    with pytest.raises(SAENotFoundError, match="has no SAE 'x'; its ids are: $"):
        pretrained.locate("last-release", "x")


def entry(**fields) -> str:
    """my-release with fields replaced (None: left out), as YAML (JSON's flow style: PyYAML is not
    the tests' to import)."""
    base = {"repo_id": "someone/my-saes", "saes": [{"id": "x", "path": "x"}]}
    base.update(fields)
    return "my-release: " + json.dumps({k: v for k, v in base.items() if v is not None}) + "\n"


@pytest.mark.parametrize(
    "text,match",
    [
        ("my-release:\n  repo_id: [unclosed\n", "is not valid YAML"),
        ("my-release:\n  repo_id: a/b\n  saes: " + "[" * 5000 + "]" * 5000 + "\n", "is not valid YAML|nests"),
        ("my-release:\n  repo_id: !!python/name:os.system x\n", "is not valid YAML"),
        ("my-release: [1, 2]\n", "is not a mapping"),
        ("my-release: plain\n", "is not a mapping"),
        ("my-release:\n", "is not a mapping"),
        (entry(repo_id=None), "lacks repo_id"),
        (entry(saes=None), "lacks saes"),
        (entry(repo_id=5), "repo_id must be a Hugging Face repo id"),
        (entry(repo_id="../../etc"), "repo_id must be a Hugging Face repo id"),
        (entry(repo_id="someone/a--b"), "repo_id must be a Hugging Face repo id"),
        (entry(repo_id="some\x1b[2Jone/x"), "repo_id must be a Hugging Face repo id"),
        (entry(saes={"id": "x"}), "saes must be a list"),
        (entry(saes=[5]), "SAE 0 .*must be a mapping with an id"),
        (entry(saes=[{"path": "x"}]), "SAE 0 .*must be a mapping with an id"),
        (entry(saes=[{"id": ["x"], "path": "x"}]), "SAE 0's id must be a string"),
        (entry(saes=[{"id": True, "path": "x"}]), "SAE 0's id must be a string"),
        (entry(saes=[{"id": "x", "path": "a"}, {"id": "x", "path": "b"}]), "lists SAE 'x' twice"),
        (entry(saes=[{"id": "x", "path": ["a"]}]), "path must be a folder name"),
        (entry(saes=[{"id": "x", "path": "../../../home"}]), "leads outside"),
        (entry(saes=[{"id": "x", "path": "/etc"}]), "leads outside"),
        (entry(saes=[{"id": "x", "path": "a\x1b]0;t\x07"}]), "control or bidirectional"),
        (entry(saes=[{"id": "x", "path": "x", "neuronpedia": 5}]), "neuronpedia must be a string"),
        (entry(saes=[{"id": "x", "path": "x", "neuronpedia": "a\u202eb"}]), "neuronpedia .*control or bidirectional"),
        (entry(saes=[{"id": "x", "path": "x", "norm_scaling_factor": "2"}]), "norm_scaling_factor must be a positive"),
        (entry(saes=[{"id": "x", "path": "x", "norm_scaling_factor": -1.0}]), "norm_scaling_factor must be a positive"),
        ("my-release: {repo_id: a/b, saes: [{id: x, path: x, norm_scaling_factor: .nan}]}\n", "norm_scaling_factor"),
        (entry(conversion_func=["a"]), "conversion_func must be"),
        (entry(config_overrides=[1]), "config_overrides must be a mapping"),
        ("my-release: {repo_id: a/b, config_overrides: {1: a}, saes: []}\n", "config_overrides must be a mapping"),
        (
            "my-release:\n  repo_id: a/b\n  config_overrides: {d: 2020-01-01}\n  saes: [{id: x, path: x}]\n",
            "config_overrides holds a date",
        ),
        (
            "my-release:\n  repo_id: a/b\n  config_overrides: {a: &a [1, 1], b: &b [*a, *a], c: [*b, *b]}\n"
            "  saes: [{id: x, path: x}]\n",
            "config_overrides repeats a value by an alias",
        ),
        (
            "my-release:\n  repo_id: a/b\n  config_overrides: &a {b: *a}\n  saes: [{id: x, path: x}]\n",
            "config_overrides repeats a value by an alias",
        ),
        ("my-release:\n  repo_id: a/b\n  saes: &s [{id: x, path: x}, *s]\n", "SAE 1 .*must be a mapping"),
        (b"my-release:\n  repo_id: a/b\xff\n", "not UTF-8"),
        ("my-release:\n  repo_id: a\x1b[2J/b\n", "is not valid YAML: unacceptable character #x001b"),
        # (review: PyYAML's int constructor raised a bare ValueError)
        ("my-release:\n  repo_id: a/b\n  config_overrides: {d: " + "9" * 5000 + "}\n  saes: [{id: x, path: x}]\n",
         "holds a value YAML cannot read: Exceeds the limit"),
    ],
)
def test_a_malformed_registry_is_a_precise_error(registry, text, match):
    path = registry(text)
    with pytest.raises(SAELoadError, match=match) as e:
        tm.SAE.from_pretrained("my-release", "x")
    message = str(e.value)
    assert str(path) in message and printable(message, keep="") == message  # names the file, harmlessly


def test_registry_ids_shown_harmlessly(registry):
    registry(entry(saes=[{"id": "\x1b]0;pwned\x07", "path": "a"}, {"id": "b\u202eevil", "path": "b"}]))
    with pytest.raises(SAENotFoundError, match="has no SAE 'x'") as e:
        tm.SAE.from_pretrained("my-release", "x")
    assert printable(str(e.value), keep="") == str(e.value)


def test_registry_that_cannot_be_read(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "registry_path", lambda: tmp_path)  # a folder
    with pytest.raises(SAELoadError, match="is not a regular file"):
        tm.SAE.from_pretrained("my-release", "x")


def test_registry_release_that_yaml_reads_as_another_type(registry):
    # "yes:" is a boolean key and "123:" an integer one in YAML 1.1: the entry is found all the same
    registry(entry().replace("my-release", "yes") + entry().replace("my-release", "123"))
    assert pretrained.locate("yes", "x")[:2] == ("someone/my-saes", "x")
    assert pretrained.locate("123", "x")[:2] == ("someone/my-saes", "x")
