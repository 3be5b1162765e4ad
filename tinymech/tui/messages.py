"""Messages between the workers, the panels and the main screen. Workers post
results; panels post what the user chose; the screen updates the view."""
from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .backend import Analysis, FeatureEffects, Steer, TokenSaliency


@dataclass
class AnalysisReady(Message):
    analysis: Analysis


@dataclass
class WorkFailed(Message):
    """Model work raised; `what` says which task, `error` is one readable line."""

    what: str
    error: str


@dataclass
class TokenSelected(Message):
    index: int


@dataclass
class HeadSelected(Message):
    layer: int
    head: int


@dataclass
class FeatureSelected(Message):
    sae_index: int
    feature: int


@dataclass
class AnswerPicked(Message):
    """A predicted token picked for the logit lens to follow."""

    token_id: int
    label: str


@dataclass
class FeatureEffectsReady(Message):
    effects: tuple[FeatureEffects, ...]


@dataclass
class SteeredLossReady(Message):
    steer: Steer
    prompt: str
    losses: object  # np.ndarray [pos]


@dataclass
class GenerationText(Message):
    """The continuation so far of one run ('clean' or 'steered'); done at the end."""

    run: str
    text: str
    done: bool = False

    def can_replace(self, message: Message) -> bool:
        # Textual asks the older message whether the newer, queued one supersedes
        # it: a newer text of the same run makes this undelivered one useless
        return isinstance(message, GenerationText) and message.run == self.run and not self.done


@dataclass
class SteerEdited(Message):
    """The user changed the intervention's mode or strength in the generate panel."""

    mode: str | None = None
    strength: float | None = None


class GenerateRequested(Message):
    """The generate button was pressed, or Enter in one of its inputs."""


@dataclass
class DashboardsReady(Message):
    """An SAE's feature dashboards, read from its folder."""

    sae_index: int
    dashboards: object  # FeatureDashboards


@dataclass
class FindFeature(Message):
    """Show where a feature fires in the prompt (from its dashboard)."""

    sae_index: int
    feature: int


@dataclass
class LabelSaved(Message):
    """A feature's label or note was saved: what shows labels redraws."""

    sae_index: int
    feature: int


@dataclass
class SaliencyReady(Message):
    """The saliency of the prompt's tokens toward the prediction at one position."""

    prompt: str
    saliency: TokenSaliency


@dataclass
class AttributionReady(Message):
    """Each head's attribution for a prompt against a corrupted variant."""

    attribution: object  # backend.AttributionMap
