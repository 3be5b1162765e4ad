"""Indirect object identification (Wang et al. 2022): prompts such as
"When Mary and John went to the store, John gave a drink to" (answer: Mary),
the IO - S logit difference, and activation patching on them."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ..errors import AnalysisError, whole_number
from ..progress import ProgressFn, progress_function
from .attribution_patching import KINDS, attribution_patch
from .patching import ACTIVATIONS, PatchingResult, logit_diff_metric, patch_activations
from ..text import format_table
from .tokens import is_single_token

# {A} and {B} are the two names in order of first mention, {S} the subject's second mention:
# ABBA prompts have A = IO, B = S; BABA prompts have A = S, B = IO.
TEMPLATES = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "After {A} and {B} arrived at the {PLACE}, {S} handed a {OBJECT} to",
    "Then, {A} and {B} had a long day at the {PLACE}. {S} gave a {OBJECT} to",
    "While {A} and {B} were working at the {PLACE}, {S} passed a {OBJECT} to",
    "Yesterday {A} and {B} found a {OBJECT} at the {PLACE}, and {S} gave it to",
    "The {PLACE} was quiet when {A} and {B} came in. {S} brought a {OBJECT} to",
)
NAMES = (
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Paul", "Sarah", "David",
    "Michael", "Anna", "Lisa", "Mark", "Emma", "Jack", "Alice", "Peter", "Susan", "George", "Laura",
    "Robert", "Rachel", "Eric", "Helen", "Jane", "Adam", "Ben", "Anne", "Steve", "Henry", "Lucy",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park",
          "market", "church", "library", "beach", "river")
OBJECTS = ("drink", "ring", "book", "letter", "bone", "snack", "key", "pen", "flower", "gift", "ball",
           "bag", "cake", "hat")
METHODS = ("activation", "attribution")
MIN_NAMES = 5  # a prompt's two names and a corrupted prompt's three others


@dataclasses.dataclass(frozen=True, eq=False)
class IOIPrompts:
    """n IOI prompts. clean[i] names IO and S; corrupted[i] is the same template,
    place and object with three other names (an "ABC" prompt carrying no
    information on which name is the answer), of the same token length.
    io_ids / s_ids: [n] int64 token ids of " IO" and " S"; kinds: "ABBA" | "BABA"."""

    clean: list[str]
    corrupted: list[str]
    io_ids: np.ndarray
    s_ids: np.ndarray
    io_names: list[str]
    s_names: list[str]
    kinds: list[str]

    def __len__(self):
        return len(self.clean)

    def __str__(self):
        rows = [[k, c, io, s] for k, c, io, s in zip(self.kinds, self.clean, self.io_names, self.s_names)][:8]
        more = f" (first {len(rows)})" if len(self) > len(rows) else ""
        return format_table(["kind", "prompt", "IO", "S"], rows, title=f"{len(self)} IOI prompts{more}",
                            align="llll")


def single_token_words(model, words: Sequence[str]) -> list[str]:
    """The words that are one token after a space in this model's vocabulary."""
    return [w for w in words if is_single_token(model, " " + w)]


def make_ioi_prompts(model, n: int = 100, seed: int = 0, templates: Sequence[str] = TEMPLATES,
                     names: Sequence[str] = NAMES, places: Sequence[str] = PLACES,
                     objects: Sequence[str] = OBJECTS) -> IOIPrompts:
    """n prompts, alternately ABBA and BABA, from the templates and the words
    that are single tokens for this model's tokenizer. A template may name {A}, {B}, {S},
    {PLACE} and {OBJECT} (see TEMPLATES)."""
    n = whole_number(n, "n", 1, error=AnalysisError)
    seed = whole_number(seed, "seed", 0, error=AnalysisError)  # numpy's generator takes no negative seed
    _check_templates(templates)
    names = single_token_words(model, names)
    places, objects = single_token_words(model, places), single_token_words(model, objects)
    if len(names) < MIN_NAMES or not places or not objects:
        raise AnalysisError(
            f"this tokenizer has too few single-token words for IOI prompts: {len(names)} names "
            f"(need {MIN_NAMES}), {len(places)} places, {len(objects)} objects"
        )
    if not templates:
        raise AnalysisError("make_ioi_prompts needs at least one template")
    rng = np.random.default_rng(seed)
    clean, corrupted, io_names, s_names, kinds = [], [], [], [], []
    for i in range(n):
        template = templates[rng.integers(len(templates))]
        place, thing = places[rng.integers(len(places))], objects[rng.integers(len(objects))]
        io, s, *others = (names[j] for j in rng.choice(len(names), size=MIN_NAMES, replace=False))
        kind = ("ABBA", "BABA")[i % 2]
        first, second = (io, s) if kind == "ABBA" else (s, io)
        clean.append(template.format(A=first, B=second, S=s, PLACE=place, OBJECT=thing))
        corrupted.append(template.format(A=others[0], B=others[1], S=others[2], PLACE=place, OBJECT=thing))
        io_names.append(io)
        s_names.append(s)
        kinds.append(kind)
    return IOIPrompts(
        clean=clean,
        corrupted=corrupted,
        io_ids=np.array([model.to_tokens(" " + w, prepend_bos=False)[0, 0] for w in io_names], dtype=np.int64),
        s_ids=np.array([model.to_tokens(" " + w, prepend_bos=False)[0, 0] for w in s_names], dtype=np.int64),
        io_names=io_names,
        s_names=s_names,
        kinds=kinds,
    )


def _check_templates(templates) -> None:
    """AnalysisError unless templates is a list of format strings naming only the prompt's fields."""
    if isinstance(templates, str):  # one template would be read as its characters
        raise AnalysisError("templates is a list of templates: give [template] for one")
    for template in templates:
        try:
            template.format(A="", B="", S="", PLACE="", OBJECT="")
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise AnalysisError(f"the template {template!r} does not format with {{A}}, {{B}}, {{S}}, {{PLACE}} "
                                f"and {{OBJECT}} ({type(e).__name__}: {e}): name only those fields") from None


def _length_groups(model, prompts: IOIPrompts, prepend_bos: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(indices, clean tokens, corrupted tokens) per token length, so batches are rectangular."""
    lengths = np.array([model.to_tokens(p, prepend_bos=prepend_bos).shape[1] for p in prompts.clean])
    groups = []
    for length in np.unique(lengths):
        idx = np.flatnonzero(lengths == length)
        clean = model.to_tokens([prompts.clean[i] for i in idx], prepend_bos=prepend_bos)
        corrupted_texts = [prompts.corrupted[i] for i in idx]
        if {model.to_tokens(t, prepend_bos=prepend_bos).shape[1] for t in corrupted_texts} != {int(length)}:
            raise AnalysisError("a corrupted prompt tokenizes to another length than its clean prompt")
        groups.append((idx, clean, model.to_tokens(corrupted_texts, prepend_bos=prepend_bos)))
    return groups


def ioi_logit_diff(model, prompts: IOIPrompts, corrupted: bool = False) -> np.ndarray:
    """logit(IO) - logit(S) at the last position of each clean (or corrupted)
    prompt: [n] float32, in the prompts' order."""
    out = np.zeros(len(prompts), dtype=np.float32)
    bos = model._bos(None)  # the model's default, read once: every run of the prompts takes it
    for idx, clean_tokens, corrupted_tokens in _length_groups(model, prompts, bos):
        last = model.forward(corrupted_tokens if corrupted else clean_tokens, logits="last",
                             prepend_bos=bos)  # [group, vocab]
        rows = np.arange(len(idx))
        out[idx] = last[rows, prompts.io_ids[idx]] - last[rows, prompts.s_ids[idx]]
    return out


def ioi_patching(model, prompts: IOIPrompts | None = None, activation: str = "head_z", mode: str = "denoise",
                 n: int = 50, seed: int = 0, progress: bool | ProgressFn | None = None,
                 method: str = "activation") -> PatchingResult:
    """Activation patching on IOI prompts (made with make_ioi_prompts(model, n,
    seed) when not given) with the mean IO - S logit difference as the metric.
    Prompts are patched in groups of equal token length and the results
    averaged, weighted by group size. activation: a key of patching.ACTIVATIONS
    ("head_z" gives [layer, head]); kinds with a position axis need prompts of one
    length (e.g. one template). progress: True for a progress line on stderr, or
    a function progress(done, total) counting patches over all groups.
    method: "activation" (a patched run per index) or "attribution" (attribution_patch:
    its first-order estimate, one forward and one forward + backward per length group;
    its kinds are attribution_patching.KINDS)."""
    if not isinstance(method, str) or method not in METHODS:
        raise AnalysisError(f"method must be one of {METHODS}, not {method!r}")
    kinds = KINDS if method == "attribution" else ACTIVATIONS
    if not isinstance(activation, str) or activation not in kinds:
        raise AnalysisError(f"activation must be one of {list(kinds)}, not {activation!r}")
    progress = progress_function(progress)
    prompts = prompts if prompts is not None else make_ioi_prompts(model, n, seed)
    bos = model._bos(None)  # the model's default, read once: every run of the prompts takes it
    groups = _length_groups(model, prompts, bos)
    if "pos" in kinds[activation][1] and len(groups) > 1:
        raise AnalysisError(
            f"{activation!r} has a position axis but these prompts have {len(groups)} token lengths; "
            "make prompts of one template: make_ioi_prompts(model, templates=[...])"
        )
    results, weights = [], []
    for g, (idx, clean_tokens, corrupted_tokens) in enumerate(groups):
        metric = logit_diff_metric(model, np.stack([prompts.io_ids[idx], prompts.s_ids[idx]], axis=1))
        # every group runs the same number of patches: count them all together
        report = None if progress is None else (
            lambda done, total, g=g: progress(g * total + done, len(groups) * total))
        if method == "attribution":
            results.append(attribution_patch(model, clean_tokens, corrupted_tokens, metric, over=activation,
                                             mode=mode, prepend_bos=bos))
            if progress is not None:
                progress(g + 1, len(groups))
        else:
            results.append(patch_activations(model, clean_tokens, corrupted_tokens, activation, metric, mode=mode,
                                             progress=report, prepend_bos=bos))
        weights.append(len(idx) / len(prompts))
    return dataclasses.replace(
        results[0],
        values=sum(w * r.values for w, r in zip(weights, results)),
        clean=float(sum(w * r.clean for w, r in zip(weights, results))),
        corrupted=float(sum(w * r.corrupted for w, r in zip(weights, results))),
    )
