// The reverse pass: given G = d metric / d logits [batch, pos, d_vocab], the
// gradient of the metric with respect to every hook point's activation, as
// TransformerLens's backward hooks see it (the gradient with respect to that
// point's output: hook_resid_pre gets its skip path's and ln1's together,
// hook_q/hook_k the gradient before rotation, hook_rot_q/hook_rot_k after it).
// No weight gradients. Hook points are visited in reverse order through a
// HookPlan (captures, edits, callbacks), which may rewrite a gradient: the
// points upstream then see the rewritten one. The pass reads a Tape that a
// forward of the same model recorded (Model::forward) and stops at its
// `from` block: points below it are not visited. Forward edits are treated
// as constants added to the activation (the gradient passes through them;
// the softmax's derivative reads its own output, the tape's pre-edit copy);
// a forward recording a tape refuses edits of the norms' scale and normalized
// points, which the backward's recomputed statistics would not see.
//
// Threads own whole outputs (rows for the norms, a (batch, key/value head)
// for attention), so results do not depend on the thread count.
#pragma once

namespace tmech {

// The linearized backwards that attribution graphs use: the same code with
// some factors held at the recorded run's values.
struct BackwardOptions {
  // The attention pattern is a constant: z = P v is linear in v. The pattern's
  // gradient is still reported, but nothing flows into the scores: their
  // gradient and hook_q/k/rot_q/rot_k's are 0 and the residual gets only the
  // value path.
  bool freeze_pattern = false;
  // Every norm's 1/scale is a constant: a norm is linear in its input
  // (LayerNorm still centers). hook_scale's gradient is still reported but
  // flows nowhere.
  bool freeze_scales = false;
};

}  // namespace tmech
