"""Analysis toolkit: logit lens, direct logit attribution, head detectors,
activation and attribution patching, IOI and saliency, on a loaded tinymech Model. Results are numpy
arrays shaped for heatmaps, and print as text tables.

    import tinymech as tm
    from tinymech import analysis
    model = tm.load("smollm2")  # pretrained; the bundled demo model knows Austen, not geography
    print(analysis.logit_lens(model, "The capital of France is", answers=[" Paris"]))
    print(analysis.head_summary(model))
"""
from .attribution import LogitAttribution, logit_attribution
from .attribution_patching import attribution_patch
from ..errors import AnalysisError
from .heads import (
    HeadScores,
    HeadSummary,
    RepeatedSequenceLoss,
    detect_head,
    duplicate_token_pattern,
    head_scores,
    head_summary,
    induction_pattern,
    induction_scores,
    pattern_similarity,
    previous_token_pattern,
    repeated_sequence_loss,
    repeated_tokens,
)
from .ioi import IOIPrompts, ioi_logit_diff, ioi_patching, make_ioi_prompts
from .logit_lens import LogitLensResult, lens_hook_names, logit_lens
from .patching import (
    PatchingResult,
    logit_diff_metric,
    patch_activations,
    patch_attn_out,
    patch_head_z,
    patch_head_z_by_pos,
    patch_mlp_out,
    patch_resid_pre,
)
from .saliency import SaliencyResult, saliency

__all__ = [
    "AnalysisError",
    "HeadScores",
    "HeadSummary",
    "IOIPrompts",
    "LogitAttribution",
    "LogitLensResult",
    "PatchingResult",
    "RepeatedSequenceLoss",
    "SaliencyResult",
    "attribution_patch",
    "detect_head",
    "duplicate_token_pattern",
    "head_scores",
    "head_summary",
    "induction_pattern",
    "induction_scores",
    "ioi_logit_diff",
    "ioi_patching",
    "logit_attribution",
    "logit_diff_metric",
    "lens_hook_names",
    "logit_lens",
    "make_ioi_prompts",
    "patch_activations",
    "patch_attn_out",
    "patch_head_z",
    "patch_head_z_by_pos",
    "patch_mlp_out",
    "patch_resid_pre",
    "pattern_similarity",
    "previous_token_pattern",
    "repeated_sequence_loss",
    "repeated_tokens",
    "saliency",
]
