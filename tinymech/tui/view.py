"""The one piece of UI state every panel renders: an immutable View. The main
screen replaces it on every change and hands it to each panel's show()."""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Mapping

import numpy as np

from ..sae.dashboards import FeatureDashboards
from .backend import TOP_FEATURES, Analysis, FeatureActs, FeatureEffects, Steer, TokenSaliency, loss_scale
from .display import token_label

COLOR_METRICS = ("loss", "steered loss", "feature", "attention", "saliency")
SIGNED_METRICS = ("saliency",)  # values in [-1, 1]: two hues


@dataclasses.dataclass(frozen=True, eq=False)  # arrays inside: compared by identity
class View:
    analysis: Analysis | None = None
    selected: int = 0  # token position that drives every panel
    layer: int = 0
    head: int = 0
    color_by: str = "loss"
    score: str = "induction"  # which head score the heads grid shows
    sae_index: int = 0
    feature: int | None = None  # the feature chosen in the features panel
    answer: tuple[int, str] | None = None  # (token id, label) the logit lens follows, picked in Next token
    steer: Steer = Steer()
    steered_losses: np.ndarray | None = None  # [pos] under `steer`, when computed
    effects: Mapping[tuple[int, int], FeatureEffects] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )  # (sae index, feature) -> promoted tokens, filled in as workers finish
    dashboards: Mapping[int, FeatureDashboards] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )  # sae index -> its feature dashboards, once loaded
    label_edits: int = 0  # counts the labels saved: what shows them redraws
    saliency: Mapping[int, TokenSaliency] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )  # position -> its tokens' saliency, for this analysis, filled in as workers finish

    def replace(self, **changes) -> View:
        return dataclasses.replace(self, **changes)

    @property
    def features(self) -> FeatureActs | None:
        a = self.analysis
        if a is None or not a.features:
            return None
        return a.features[min(self.sae_index, len(a.features) - 1)]

    @property
    def dashboard(self) -> FeatureDashboards | None:
        """The dashboards of the SAE shown, when it has them (and they are loaded)."""
        return self.dashboards.get(self.sae_index)

    def ranked_features(self) -> tuple[tuple[int, float, float | None], ...]:
        """(feature, activation, share of its maximum over the corpus) of the features
        active at the selected token, first the most active: with dashboards by that
        share, so that a dense feature's large values do not lead on every token
        (share None, ranked last: a feature the corpus never activated); without, by value."""
        fa = self.features
        if fa is None or self.analysis is None:
            return ()
        i, dash = self.selected, self.dashboard
        if dash is None:
            return tuple((int(f), float(v), None) for f, v in zip(fa.top_ids[i], fa.top_values[i]) if v > 0)
        active = np.flatnonzero(fa.acts[i] > 0)
        values = fa.acts[i, active].astype(np.float64)
        peaks = np.asarray(dash.max_activation, dtype=np.float64)[active]
        known = peaks > 0
        shares = np.where(known, values / np.where(known, peaks, 1.0), 0.0)
        order = np.lexsort((-values, -shares, ~known))[:TOP_FEATURES]  # the last key sorts first
        return tuple((int(active[k]), float(values[k]), float(shares[k]) if known[k] else None) for k in order)

    def feature_label(self, feature: int) -> tuple[str, str | None]:
        """(label, "user" | "auto" | None) of a feature of the SAE shown: from its
        dashboards (a user's label first), else from the SAE's feature list."""
        dash = self.dashboard
        if dash is not None:
            label, source = dash.label(feature)
            if label:
                return label, source
        fa = self.features
        return (fa.sae.labels.get(feature, "") if fa is not None else ""), None

    def followed(self) -> tuple[int, str, str] | None:
        """(token id, label, why) of the token the logit lens follows at the
        selected position: the one picked, else the actual next, else at the
        end of the prompt the model's top prediction."""
        a, i = self.analysis, self.selected
        if a is None:
            return None
        if self.answer is not None:
            return *self.answer, "picked"
        if i + 1 < a.n_tokens:
            return int(a.token_ids[i + 1]), a.labels[i + 1], "actual next"
        return int(a.top_ids[i, 0]), token_label(a.top_tokens[i][0]), "top prediction"

    def token_values(self) -> np.ndarray | None:
        """The color metric per token scaled to [0, 1] ([-1, 1] for SIGNED_METRICS; nan: no
        value there); None when the metric is unavailable."""
        a = self.analysis
        if a is None:
            return None
        if self.color_by in ("loss", "steered loss"):
            losses = a.losses if self.color_by == "loss" else self.steered_losses
            if losses is None:
                return None
            return losses / loss_scale(a.vocab_size)
        if self.color_by == "feature":
            fa = self.features
            if fa is None or self.feature is None:
                return None
            acts = fa.acts[:, self.feature]
            # scaled to the text's tokens: the BOS residual is an outlier many SAEs never saw
            top = float(acts[1:].max() if a.bos and len(acts) > 1 else acts.max())
            return acts / top if top > 0 else np.zeros_like(acts)
        if self.color_by == "attention":
            row = a.patterns[self.layer, self.head, self.selected].astype(np.float32).copy()
            row[self.selected + 1 :] = np.nan  # a token cannot attend to later ones
            return row
        if self.color_by == "saliency":
            s = self.saliency.get(self.selected)
            if s is None:
                return None
            top = float(np.nanmax(np.abs(s.scores)))
            return s.scores / top if top > 0 else s.scores
        return None

    def metric_text(self) -> str:
        """What the selected token's color means, for the tokens panel title."""
        a = self.analysis
        if a is None:
            return ""
        i = self.selected
        if self.color_by == "loss":
            return "" if i == 0 else f"loss {a.losses[i]:.2f}"
        if self.color_by == "steered loss":
            if not self.steer.active:
                return "set an intervention with s"
            if self.steered_losses is None:
                return "computing…"
            return "" if i == 0 else f"{self.steered_losses[i]:.2f} (clean {a.losses[i]:.2f})"
        if self.color_by == "feature":
            fa = self.features
            if fa is None:
                return "no SAE loaded"
            if self.feature is None:
                return "pick a feature (Enter in Features)"
            return f"#{self.feature} {fa.acts[i, self.feature]:.2f}"
        if self.color_by == "attention":
            return f"L{self.layer}H{self.head} from here"
        if self.color_by == "saliency":
            s = self.saliency.get(i)
            if s is None:
                return "computing…"
            return f"pushing {s.target_label}: this token {s.scores[i]:+.2f}"
        return ""

