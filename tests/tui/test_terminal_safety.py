"""Strings from a model's files never drive the terminal: a model folder whose
name, vocabulary, chat template and SAE labels hold escape sequences (window
title, clipboard, clear screen, hidden text), carriage returns and Textual
markup, seen through every output path: generate, info, error messages,
analysis tables and plots, dynamics, and the TUI's title bar, features and
notifications. Each shows the characters as visible pictures instead."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from textual.widgets import Input

import tinymech as tm
from llama_factory import make_hf_llama
from tui_support import build_sae_dir, settle
from tinymech import analysis
from tinymech.cli import main
from tinymech.text import heatmap, line_chart
from tinymech.sae.sae import SAE
from tinymech.text import printable
from tinymech.tui.app import make_app
from tinymech.tui.display import token_label
from tinymech.tui.messages import SaliencyReady
from tinymech.tui.widgets.features import FeaturesPanel
from tinymech.tui.widgets.title import TitleBar

TITLE = "\x1b]0;pwned\x07"  # sets the window title
HOSTILE = [TITLE, "\x1b]52;c;cHduZWQ=\x07", "\x1b[2J", "\x1b[8m", "\r", "\x08", "\x9b31m", "\x7f",
           "[link=https://x]y[/link]", "\u202egnp.exe\u2066"]
ORDINARY = ["a", "b", "café", "日本語", "🙂", "👩‍👩‍👧"]
UNK = "[link=https://x]unk"
MARKUP = ["[/]", "[/b]", "[b]", "[/"]  # tokens that look like Textual markup, unbalanced
VOCAB = 64
SHAPE = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=48,
             num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=32)


def build_hostile_model(parent: Path) -> Path:
    """A random Llama whose folder name, vocabulary and chat template are hostile:
    ids 0-1 BOS/EOS, 2 the unknown token, then ORDINARY, then HOSTILE variants."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = parent / f"model{TITLE}"
    make_hf_llama(path, std=0.5, **SHAPE)
    vocab = {"<s>": 0, "</s>": 1, UNK: 2, **{w: 3 + i for i, w in enumerate(ORDINARY)}}
    for i in range(VOCAB - len(vocab) - len(MARKUP)):
        vocab[f"{HOSTILE[i % len(HOSTILE)]}{i}"] = len(vocab)
    vocab.update({token: len(vocab) + i for i, token in enumerate(MARKUP)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path / "tokenizer.json"))
    config = json.loads((path / "config.json").read_text())
    config["chat_template"] = f"{{% for m in messages %}}{TITLE}\n{{{{ m }}}}\x1b[2J\u202e\n{{% endfor %}}"
    (path / "config.json").write_text(json.dumps(config))
    return path


def assert_harmless(text: str):
    """No character that a terminal acts on, other than newlines and tabs, and no
    bidirectional override or isolate (they reorder the text shown around them)."""
    unsafe = [c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0
              or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]
    assert not unsafe, (unsafe, text)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_hostile_model(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def model(model_dir):
    return tm.load(model_dir)


@pytest.fixture(scope="module")
def sae(model, tmp_path_factory):
    path = build_sae_dir(tmp_path_factory.mktemp("hostile-sae") / "sae", d_in=SHAPE["hidden_size"])
    labels = {str(f): {"label": f"{HOSTILE[f % len(HOSTILE)]} feature {f}"} for f in range(64)}
    (path / "feature_labels.json").write_text(json.dumps(labels))
    return SAE.load(path)


HOSTILE_IDS = np.array([[0, 12, 13, 14, 15, 16, 17, 18]])  # BOS and HOSTILE tokens, one of each kind


def test_printable_shows_controls_and_keeps_text():
    ordinary = "café naïve 日本語 한국어 🙂 👩‍👩‍👧 ­soft-hyphen\u200bzwsp"
    assert printable(ordinary) == ordinary
    assert printable("\x1b]0;t\x07") == "␛]0;t␇"
    assert printable("a\rb\x08c\x7fd\x9be\udcfff") == "a␍b␈c\ufffdd\ufffde\ufffdf"
    assert printable("a\tb\nc") == "a␉b\nc"
    assert printable("a\tb\nc", keep="\n\t") == "a\tb\nc"
    assert printable("a\tb\nc", keep="") == "a␉b␊c"
    # the Trojan Source reordering: bidirectional embeddings, overrides and isolates
    assert printable("x\u202ay\u202bz\u202c\u202d\u202e\u2066\u2067\u2068\u2069") == "x\ufffdy\ufffdz" + "\ufffd" * 7
    assert printable("עברית \u200f العربية") == "עברית \u200f العربية"  # a mark reorders as a letter would


def test_the_tui_uses_the_shared_sanitizer():
    from tinymech.tui import display

    assert display.printable is printable


def test_generate_streams_hostile_tokens_as_pictures(model_dir, model, capsys):
    prompt = model.to_tokens("a b café")
    ids = model.generate(prompt, max_new_tokens=12)[0, prompt.shape[1]:]
    raw = model.to_string([i for i in ids if i != model.tokenizer.eos_token_id])  # the CLI streams this
    assert "\x1b" in raw and "\u202e" in raw  # the continuation does hold escape sequences
    assert main(["generate", "-m", str(model_dir), "a b café", "-n", "12"]) == 0
    out = capsys.readouterr().out
    assert_harmless(out)
    assert out == "a b café" + printable(raw, keep="\n\t") + "\n"


def test_the_echoed_prompt_is_harmless(model_dir, capsys):
    assert main(["generate", "-m", str(model_dir), f"a\tb\n{TITLE}", "-n", "0"]) == 0
    assert capsys.readouterr().out == "a\tb\n␛]0;pwned␇\n"


def test_info_shows_the_name_and_template_harmlessly(model_dir, capsys):
    assert main(["info", "-m", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert_harmless(out)
    assert "model_name: model␛]0;pwned␇" in out and "Model(model␛]0;pwned␇:" in out
    assert "chat_template: {% for m in messages %}␛]0;pwned␇ … (3 lines; --full shows them)" in out
    assert main(["info", "--full", "-m", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert_harmless(out)
    assert "  chat_template: (3 lines)\n    {% for m in messages %}␛]0;pwned␇\n    {{ m }}␛[2J\ufffd\n" in out


def test_error_messages_quoting_files_are_harmless(tmp_path, capsys):
    assert main(["info", "-m", str(tmp_path / f"nowhere{TITLE}")]) == 2
    captured = capsys.readouterr()
    assert_harmless(captured.err)
    assert captured.err.count("\n") == 1 and "nowhere␛]0;pwned␇" in captured.err


def test_run_tui_errors_are_harmless(tmp_path, capsys):
    from tinymech.tui.app import run_tui

    with pytest.raises(SystemExit):
        run_tui(model_path=tmp_path / f"nowhere{TITLE}")
    err = capsys.readouterr().err
    assert_harmless(err)
    assert "nowhere␛]0;pwned␇" in err


RECORD = {"step": 1, "train_loss": 1.0, "val_loss": 1.0, "rep_loss_first_half": 1.0, "rep_loss_second_half": 1.0,
          "induction_score": [[0.5]], "prev_token_score": [[0.5]]}


def test_dynamics_with_text_instead_of_numbers_is_one_harmless_line(tmp_path, capsys):
    (tmp_path / "training_dynamics.json").write_text(json.dumps({"records": [RECORD, dict(RECORD, step=TITLE)]}))
    assert main(["dynamics", "-m", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert '"step" must be a number in every record' in captured.err
    assert_harmless(captured.err)


@pytest.mark.parametrize("damage, message", [
    (b"\xff\xfe", "is not UTF-8 text"),
    (b"[1, 2]", "does not hold an object at its top level"),
    (b'{"records": []}', '"records" must be a non-empty list of objects'),
    (b'{"records": [1]}', '"records" must be a non-empty list of objects'),
    ({"train_loss": "1.0x"}, '"train_loss" must be a number'),
    ({"step": None}, '"step" must be a number'),
    ({"val_loss": [1.0]}, '"val_loss" must be a number'),
    ({"step": float("inf")}, "Infinity, which is not a number JSON allows"),
    ({"induction_score": [0.5]}, '"induction_score" must be a [layer, head] grid'),
    ({"induction_score": [["x"]]}, '"induction_score" must be a [layer, head] grid'),
    ({"induction_score": [[10 ** 400]]}, "an integer of 401 digits"),
    ({"prev_token_score": [[]]}, '"prev_token_score" must be a [layer, head] grid'),
    ({"prev_token_score": [[0.5, 0.5]]}, '"prev_token_score" must be a [layer, head] grid'),  # not as the other
])
def test_damaged_dynamics_files_are_one_line(tmp_path, capsys, damage, message):
    if isinstance(damage, dict):  # a record changed so, after a good one
        damage = json.dumps({"records": [RECORD, dict(RECORD, **damage)]}).encode()
    (tmp_path / "training_dynamics.json").write_bytes(damage)
    assert main(["dynamics", "-m", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("tinymech: error:") and captured.err.count("\n") == 1
    assert message in captured.err


def test_analysis_tables_and_plots_are_harmless(model, sae):
    lens = analysis.logit_lens(model, HOSTILE_IDS, k=3)
    attribution = analysis.logit_attribution(model, HOSTILE_IDS, token=12)
    patching = analysis.patch_resid_pre(model, HOSTILE_IDS, HOSTILE_IDS[:, ::-1], metric=lambda lg: float(lg[0, -1, 3]))
    effects = sae.logit_effects(model, 0, k=5)
    shown = {
        "logit lens": str(lens),
        "attribution": str(attribution),
        "patching": str(patching),
        "patching heatmap": patching.heatmap(),
        "saliency": str(analysis.saliency(model, HOSTILE_IDS, target=12)),
        "logit effects": str(effects),
        "heatmap": heatmap(np.eye(2), [TITLE, "b"], ["\r", "\x9b2J"], title=TITLE),
        "line chart": line_chart({TITLE: ([0, 1], [1, 2])}, title=TITLE),
    }
    for name, text in shown.items():
        assert_harmless(text)
        assert "␛" in text or "␍" in text, name  # the tokens are there, visible
    assert "\n" not in patching.pos_labels[1]


@pytest.fixture(scope="module")
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_tui_title_and_feature_labels_are_harmless(model, sae):
    app = make_app(model, [sae], "a b café")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        screen = app.screen_stack[0]
        title = screen.query_one(TitleBar).render().plain
        assert_harmless(title)
        assert "model␛]0;pwned␇" in title
        options = screen.query_one(FeaturesPanel).options
        features = "\n".join(options.get_option_at_index(i).prompt.plain for i in range(options.option_count))
        assert_harmless(features)
        assert "feature" in features and ("␛" in features or "␍" in features)  # hostile labels, shown harmless


@pytest.mark.anyio
async def test_tui_saliency_names_a_hostile_prediction_harmlessly(model):
    app = make_app(model, [], "a b café")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "c", "c", "c", "c")
        await settle(pilot)
        screen = app.screen_stack[0]
        s = app.backend.saliency(screen.view.analysis.token_ids, screen.view.selected)
        hostile = dataclasses.replace(s, target_label=token_label(TITLE))  # as if the model predicted it
        screen.post_message(SaliencyReady(screen.view.analysis.prompt, hostile))
        await settle(pilot)
        title = str(screen.query_one("#tokens-box").border_title)
        assert_harmless(title)
        assert "color: saliency" in title and "pushing" in title and "␛" in title


@pytest.mark.anyio
async def test_tui_text_fields_never_hold_what_drives_a_terminal(model, sae, monkeypatch):
    # the prompt field showed a prompt's escape sequences raw (a PTY saw OSC 52 and the
    # right-to-left override), and text pasted into any field went to the screen as it came
    from textual import events

    from tinymech.tui.display import field_text

    hostile = f"a{TITLE}b\x1b]52;c;cHduZWQ=\x07c\u202ed\n"
    app = make_app(model, [sae], hostile)
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        screen = app.screen_stack[0]
        field = screen.query_one("#prompt", Input)
        assert_harmless(field.value)
        assert field.value == "a␛]0;pwned␇b␛]52;c;cHduZWQ=␇c\ufffdd↵"
        analyzed = []
        monkeypatch.setattr(screen, "analyze", analyzed.append)
        field.focus()
        await pilot.press("enter")
        assert analyzed == [hostile]  # the prompt given, as it was: the model reads what the user gave
        field.focus()
        await pilot.press("end", "x", "enter")
        # edited: its C0 controls come back from their pictures (an edit kept ESC and BEL); the
        # override, shown as U+FFFD, cannot
        assert analyzed[-1] == hostile.replace("\u202e", "\ufffd") + "x"
        await pilot.press("a")
        for name in ("#prompt", "#corrupted-prompt"):  # typed, pasted or set, each field stays harmless
            other = screen.query_one(name, Input)
            other.value = hostile
            assert other.value == field_text(hostile)
            other.value = ""
            other.post_message(events.Paste(hostile))  # its first line
            await pilot.pause()
            assert other.value == "a␛]0;pwned␇b␛]52;c;cHduZWQ=␇c\ufffdd"


@pytest.mark.anyio
async def test_tui_error_notifications_show_markup_and_escapes_as_text(model, monkeypatch):
    app = make_app(model, [], "a b café")
    message = f"no token {UNK!r} in {TITLE} [bold"  # an error quoting a tokenizer's strings

    def fail(prompt):
        raise tm.InvalidTokensError(message)

    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        monkeypatch.setattr(app.backend, "analyze", fail)
        app.screen_stack[0].query_one("#prompt", Input).value = "b a"
        await pilot.press("slash", "enter")
        await settle(pilot)
        notes = list(app._notifications)
        assert len(notes) == 1 and notes[0].markup is False
        assert_harmless(notes[0].message)
        assert notes[0].message.startswith(printable(message))
        await pilot.pause()  # the toast renders without a MarkupError
        assert app.is_running


@pytest.mark.anyio
async def test_tokens_that_look_like_markup_are_shown_as_text_in_titles(model):
    # the lens's title names the token it follows: an unbalanced "[/]" crashed the app (MarkupError)
    app = make_app(model, [], "a " + " ".join(MARKUP) + " b")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("escape")
        screen = app.screen_stack[0]
        titles = set()
        for _ in range(len(MARKUP) + 2):
            await pilot.press("left")
            await settle(pilot)
            titles.add(str(screen.query_one("#lens").border_title))
        assert app.is_running
        assert all(any(f"following {token}" in t or token in t for t in titles) for token in ("[/]", "[/b]", "[b]"))



def test_the_reprs_of_a_model_and_an_sae_are_harmless(model, sae):
    # typed at a REPL, repr(model) wrote the folder's name raw (it retitled the window)
    assert_harmless(repr(model))
    assert "model␛]0;pwned␇" in repr(model)
    assert_harmless(repr(sae))


def test_token_ids_outside_the_vocabulary_are_invalid_tokens(model):
    # -1 and 2**32 + 5 overflowed inside tokenizers; 10**6 decoded silently as ''
    for ids in ([-1], [2 ** 32 + 5], [VOCAB], [1.5]):
        with pytest.raises(tm.InvalidTokensError):
            model.to_string(ids)
        with pytest.raises(tm.InvalidTokensError):
            model.to_str_tokens(np.array([ids], dtype=object))


def test_steering_strengths_that_are_not_numbers_are_hook_errors(sae):
    for strength in (10 ** 400, "x", None, float("nan")):
        with pytest.raises(tm.HookError):
            sae.steer(0, strength)


@pytest.mark.anyio
async def test_tui_attribution_panel_shows_hostile_tokens_and_prompts_harmlessly(model):
    """The attribution panel's title names two predicted tokens and its info line the corrupted
    prompt: unbalanced markup and escapes there show as text, and nothing crashes."""
    from tinymech.tui.backend import AttributionMap
    from tinymech.tui.messages import AttributionReady
    from tinymech.tui.widgets.attribution import AttributionPanel

    app = make_app(model, [], "a b café")
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        screen = app.screen_stack[0]
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        hostile = AttributionMap(screen.view.analysis.prompt, f"b a {TITLE}", "[/]", token_label(TITLE),
                                 np.ones((n_layers, n_heads)), 1.0, 0.0)
        screen.post_message(AttributionReady(hostile))
        await pilot.press("7")
        await settle(pilot)
        panel = screen.query_one(AttributionPanel)
        title = panel.border_title.plain if hasattr(panel.border_title, "plain") else str(panel.border_title)
        info = panel.query_one("#attribution-info").render().plain
        for text in (title, info):
            assert_harmless(text)
        assert "[/]" in title and "␛" in title and "␛" in info
