"""The API uses of seven public notebooks, as data, for the notebook-port measurement (run.py).

Sources (read from the repositories' history):
  TransformerLens v2.18.0 (589acd47c7a4, the HookedTransformer era): demos/Main_Demo.ipynb,
    demos/Exploratory_Analysis_Demo.ipynb, demos/Activation_Patching_in_TL_Demo.ipynb,
    demos/Head_Detector_Demo.ipynb
  SAELens 6.18.0 (jbloomAus/SAELens 91ca16ccd068): tutorials/basic_loading_and_analysing.ipynb,
    tutorials/using_an_sae_as_a_steering_vector.ipynb, tutorials/Hooked_SAE_Transformer_Demo.ipynb

Each probe is one use (a statement or a few, with the user code around it that the cell has) of
TransformerLens's or SAELens's API, with its `code` exactly as the cell writes it, in TransformerLens's
and SAELens's spelling; run.py changes only the imports for tinymech. `setup` names blocks of SETUPS run
first in the same fresh namespace: the notebook's earlier cells, written so they run on both libraries
(where a cell itself fails on tinymech, its setup is the small edit a user would make, and the cell is a
probe of its own). `result` is an expression compared between the libraries after the code ran (numbers
with np.allclose at float32 tolerance; `compare` says how), or None when only running matters.

Stand-ins (standins.py): every model is the bundled demo GPT-2 (4 layers, 8 heads, a vocabulary of 8192
trained on Austen and the Bible), every SAE the demo SAE or random SAEs for it. What that forces is in
STANDIN_SUBS (applied to setups and code alike, on both sides) and in the setups (layers, heads, token
ranges that fit the smaller model; a small dataset instead of pile-10k).

Not probed (neither library can run them here): loading hub checkpoints (from_pretrained(...,
checkpoint_index=), "attn-only-2l", "solu-2l", "gemma-2b" by name, SAE.from_pretrained of
gpt2-small-hook-z-kk), evals.induction_loss (needs 768 positions), load_dataset("NeelNanda/pile-10k"),
circuitsvis / pysvelte / neel_plotly / sae_dashboard displays.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

MAIN = "Main_Demo"
EXPL = "Exploratory_Analysis_Demo"
PATCH = "Activation_Patching_in_TL_Demo"
HEADS = "Head_Detector_Demo"
BASIC = "basic_loading_and_analysing"
STEER = "using_an_sae_as_a_steering_vector"
HSAE = "Hooked_SAE_Transformer_Demo"
NOTEBOOKS = (MAIN, EXPL, PATCH, HEADS, BASIC, STEER, HSAE)

# words of the notebooks' prompts that the stand-in's tokenizer splits, where the notebook needs one
# token (to_single_token, get_token_position) or prompts of one length (GPT-2's tokenizer gives the IOI
# prompts one length): each becomes a word it keeps whole
STANDIN_SUBS = (
    (" shops", " shop"), (" bag ", " book "), (" apple", " ox"), (" Sid", " Simon"), (" Amy", " Anne"),
    ("Claire", "Jane"), (" cat", " man"),
)


@dataclass(frozen=True)
class Probe:
    id: str
    notebook: str
    code: str  # as the notebook's cell writes it
    setup: tuple = ()  # names of SETUPS, run in order before the code
    result: str | None = None  # an expression compared between the libraries
    numeric: bool = True  # False: the result is not comparable (sampling, printed text); running is enough
    # "allclose", "exact" (==), "eig" (eigenvalues: their sum and |sum| per row) or "topk" (allclose, but 1 row
    # in 1000 may differ: a TopK SAE picks either of two near-equal features)
    compare: str = "allclose"
    subs: tuple = ()  # more stand-in substitutions for this probe's code, (old, new)
    note: str = ""


def _d(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


SETUPS = {
    "base": _d("""
        import torch
        import numpy as np
        import einops
        from functools import partial
        from jaxtyping import Float
        import tqdm.auto as tqdm
        from fancy_einsum import einsum
        torch.set_grad_enabled(False)
        device = "cpu"
    """),
    "tl": _d("""
        import transformer_lens.utils as utils
        from transformer_lens.hook_points import HookPoint
        from transformer_lens import HookedTransformer, FactoredMatrix, ActivationCache
    """),
    # the stand-in is "gpt2" in both libraries' eyes ("gpt2-small", TransformerLens's alias, is a probe)
    "gpt2": 'model = HookedTransformer.from_pretrained("gpt2", device=device)',
    # ---- Main_Demo
    "main.text": _d('''
        model_description_text = """## Loading Models

        HookedTransformer comes loaded with >40 open source GPT-style models. You can load any of them in with `HookedTransformer.from_pretrained(MODEL_NAME)`. See my explainer for documentation of all supported models, and this table for hyper-parameters and the name used to load them. Each model is loaded into the consistent HookedTransformer architecture, designed to be clean, consistent and interpretability-friendly.

        For this demo notebook we'll look at GPT-2 Small, an 80M parameter model. To try the model the model out, let's find the loss on this paragraph!"""
        gpt2_text = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning on taskspecific datasets."
        gpt2_tokens = model.to_tokens(gpt2_text)
    '''),
    "main.cache": _d("""
        gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True)
        attention_pattern = gpt2_cache["pattern", 0, "attn"]
        attn_hook_name = "blocks.0.attn.hook_pattern"
        attn_layer = 0
    """),
    "main.ioi": _d("""
        clean_prompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
        corrupted_prompt = "After John and Mary went to the store, John gave a bottle of milk to"

        clean_tokens = model.to_tokens(clean_prompt)
        corrupted_tokens = model.to_tokens(corrupted_prompt)

        def logits_to_logit_diff(logits, correct_answer=" John", incorrect_answer=" Mary"):
            correct_index = model.to_single_token(correct_answer)
            incorrect_index = model.to_single_token(incorrect_answer)
            return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

        clean_logits, clean_cache = model.run_with_cache(clean_tokens)
        clean_logit_diff = logits_to_logit_diff(clean_logits)
        corrupted_logits = model(corrupted_tokens)
        corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
        layer, position = 1, 3
    """),
    "main.ioi_result": _d("""
        num_positions = len(clean_tokens[0])
        ioi_patching_result = torch.ones((model.cfg.n_layers, num_positions), device=model.cfg.device)
    """),
    # the notebook's bias_indices come from torch's sort of W_U's bias
    "main.bias_indices": "bias_indices = torch.arange(40)",
    # torch.randint(1000, 10000, ...) in the notebook: the stand-in's vocabulary has 8192 tokens
    "main.repeated": _d("""
        torch.manual_seed(0)
        batch_size = 10
        seq_len = 50
        size = (batch_size, seq_len)
        input_tensor = torch.randint(1000, 8000, size)
        random_tokens = input_tensor.to(model.cfg.device)
        repeated_tokens = einops.repeat(random_tokens, "batch seq_len -> batch (2 seq_len)")
    """),
    "main.AB": _d("""
        torch.manual_seed(50)
        A = torch.randn(5, 2)
        B = torch.randn(2, 5)
        AB = A @ B
        AB_factor = FactoredMatrix(A, B)
        C = torch.randn(5, 300)
        ABC = AB @ C
    """),
    "main.example": _d("""
        example_text = "The first thing you need to figure out is *how* things are tokenized. `model.to_str_tokens` splits a string into the tokens *as a list of substrings*, and so lets you explore what the text looks like. To demonstrate this, let's use it on this paragraph."
        example_text_tokens = model.to_tokens(example_text)
    """),
    # ---- Exploratory_Analysis_Demo (and the IOI prompts of Hooked_SAE_Transformer_Demo)
    "expl.model": 'model = HookedTransformer.from_pretrained("gpt2", center_unembed=True, '
                  'center_writing_weights=True, fold_ln=True)',
    "expl.prompts": _d("""
        prompt_format = [
            "When John and Mary went to the shops,{} gave the bag to",
            "When Tom and James went to the park,{} gave the ball to",
            "When Dan and Sid went to the shops,{} gave an apple to",
            "After Martin and Amy went to the park,{} gave a drink to",
        ]
        names = [
            (" Mary", " John"),
            (" Tom", " James"),
            (" Dan", " Sid"),
            (" Martin", " Amy"),
        ]
        prompts = []
        answers = []
        answer_tokens = []
        for i in range(len(prompt_format)):
            for j in range(2):
                answers.append((names[i][j], names[i][1 - j]))
                answer_tokens.append(
                    (
                        model.to_single_token(answers[-1][0]),
                        model.to_single_token(answers[-1][1]),
                    )
                )
                prompts.append(prompt_format[i].format(answers[-1][1]))
        answer_tokens = torch.tensor(answer_tokens).to(device)
        tokens = model.to_tokens(prompts, prepend_bos=True)
        original_logits, cache = model.run_with_cache(tokens)
    """),
    # logits_to_ave_logit_diff as the notebook writes it (torch's gather), given torch logits
    "expl.logit_diff": _d("""
        def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
            final_logits = logits[:, -1, :]
            answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
            answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
            if per_prompt:
                return answer_logit_diff
            else:
                return answer_logit_diff.mean()
        original_average_logit_diff = logits_to_ave_logit_diff(torch.as_tensor(np.asarray(original_logits)), answer_tokens)
        answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
        logit_diff_directions = (
            answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
        )
        def residual_stack_to_logit_diff(
            residual_stack: Float[torch.Tensor, "components batch d_model"],
            cache: ActivationCache,
        ) -> float:
            scaled_residual_stack = cache.apply_ln_to_stack(
                residual_stack, layer=-1, pos_slice=-1
            )
            return einsum(
                "... batch d_model, batch d_model -> ...",
                scaled_residual_stack,
                logit_diff_directions,
            ) / len(prompts)
        per_head_residual, labels = cache.stack_head_results(
            layer=-1, pos_slice=-1, return_labels=True
        )
        per_head_logit_diffs = residual_stack_to_logit_diff(per_head_residual, cache)
    """),
    "expl.corrupted": _d("""
        corrupted_prompts = []
        for i in range(0, len(prompts), 2):
            corrupted_prompts.append(prompts[i + 1])
            corrupted_prompts.append(prompts[i])
        corrupted_tokens = model.to_tokens(corrupted_prompts, prepend_bos=True)
        def patch_residual_component(
            corrupted_residual_component: Float[torch.Tensor, "batch pos d_model"],
            hook,
            pos,
            clean_cache,
        ):
            corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
            return corrupted_residual_component
        def patch_head_vector(
            corrupted_head_vector: Float[torch.Tensor, "batch pos head_index d_head"],
            hook,
            head_index,
            clean_cache,
        ):
            corrupted_head_vector[:, :, head_index, :] = clean_cache[hook.name][
                :, :, head_index, :
            ]
            return corrupted_head_vector
        def patch_head_pattern(
            corrupted_head_pattern: Float[torch.Tensor, "batch head_index query_pos d_head"],
            hook,
            head_index,
            clean_cache,
        ):
            corrupted_head_pattern[:, head_index, :, :] = clean_cache[hook.name][
                :, head_index, :, :
            ]
            return corrupted_head_pattern
        layer, position, head_index = 2, 10, 3
    """),
    "expl.corrupted_diff": _d("""
        corrupted_logits, corrupted_cache = model.run_with_cache(
            corrupted_tokens, return_type="logits"
        )
        corrupted_average_logit_diff = logits_to_ave_logit_diff(torch.as_tensor(np.asarray(corrupted_logits)), answer_tokens)
    """),
    # visualize_attention_patterns' arguments
    "expl.heads": "heads = [3, 9, 30]\nlabels = []\nbatch_index = 0\nlocal_cache = cache\nlocal_tokens = tokens[0]",
    # torch.randint(100, 20000, ...) in the notebook: the stand-in's vocabulary has 8192 tokens
    "expl.scores": _d("""
        seq_len = 100
        batch_size = 2
        prev_token_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=device)
        def prev_token_hook(pattern, hook):
            layer = hook.layer()
            diagonal = pattern.diagonal(offset=1, dim1=-1, dim2=-2)
            prev_token_scores[layer] = einops.reduce(
                diagonal, "batch head_index diagonal -> head_index", "mean"
            )
        duplicate_token_scores = torch.zeros(
            (model.cfg.n_layers, model.cfg.n_heads), device=device
        )
        def duplicate_token_hook(pattern, hook):
            layer = hook.layer()
            diagonal = pattern.diagonal(offset=seq_len, dim1=-1, dim2=-2)
            duplicate_token_scores[layer] = einops.reduce(
                diagonal, "batch head_index diagonal -> head_index", "mean"
            )
        induction_scores = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=device)
        def induction_hook(pattern, hook):
            layer = hook.layer()
            diagonal = pattern.diagonal(offset=seq_len - 1, dim1=-1, dim2=-2)
            induction_scores[layer] = einops.reduce(
                diagonal, "batch head_index diagonal -> head_index", "mean"
            )
        torch.manual_seed(0)
        original_tokens = torch.randint(
            100, 8000, size=(batch_size, seq_len), device="cpu"
        ).to(device)
        repeated_tokens = einops.repeat(
            original_tokens, "batch seq_len -> batch (2 seq_len)"
        ).to(device)
        pattern_filter = lambda act_name: act_name.endswith("hook_pattern")
    """),
    # the ablated run of the cell that uses a module's hook point, spelled with model.hooks
    "expl.ablated": _d("""
        top_name_mover = int(np.asarray(per_head_logit_diffs).flatten().argmax())
        top_name_mover_layer = top_name_mover // model.cfg.n_heads
        top_name_mover_head = top_name_mover % model.cfg.n_heads
        def ablate_top_head_hook(z: Float[torch.Tensor, "batch pos head_index d_head"], hook):
            z[:, -1, top_name_mover_head, :] = 0
            return z
        with model.hooks(fwd_hooks=[(utils.get_act_name("z", top_name_mover_layer), ablate_top_head_hook)]):
            ablated_logits, ablated_cache = model.run_with_cache(tokens)
    """),
    # ---- Activation_Patching_in_TL_Demo
    "patch.imports": "import transformer_lens.patching as patching",
    "patch.ioi": _d("""
        prompts = ['When John and Mary went to the shops, John gave the bag to', 'When John and Mary went to the shops, Mary gave the bag to', 'When Tom and James went to the park, James gave the ball to', 'When Tom and James went to the park, Tom gave the ball to', 'When Dan and Sid went to the shops, Sid gave an apple to', 'When Dan and Sid went to the shops, Dan gave an apple to', 'After Martin and Amy went to the park, Amy gave a drink to', 'After Martin and Amy went to the park, Martin gave a drink to']
        answers = [(' Mary', ' John'), (' John', ' Mary'), (' Tom', ' James'), (' James', ' Tom'), (' Dan', ' Sid'), (' Sid', ' Dan'), (' Martin', ' Amy'), (' Amy', ' Martin')]
        clean_tokens = model.to_tokens(prompts)
        corrupted_tokens = clean_tokens[
            [(i+1 if i%2==0 else i-1) for i in range(len(clean_tokens)) ]
            ]
        answer_token_indices = torch.tensor([[model.to_single_token(answers[i][j]) for j in range(2)] for i in range(len(answers))], device=model.cfg.device)
        def get_logit_diff(logits, answer_token_indices=answer_token_indices):
            if len(logits.shape)==3:
                logits = logits[:, -1, :]
            correct_logits = logits.gather(1, answer_token_indices[:, 0].unsqueeze(1))
            incorrect_logits = logits.gather(1, answer_token_indices[:, 1].unsqueeze(1))
            return (correct_logits - incorrect_logits).mean()
        clean_logits, clean_cache = model.run_with_cache(clean_tokens)
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)
        clean_logit_diff = get_logit_diff(torch.as_tensor(np.asarray(clean_logits)), answer_token_indices).item()
        corrupted_logit_diff = get_logit_diff(torch.as_tensor(np.asarray(corrupted_logits)), answer_token_indices).item()
        CLEAN_BASELINE = clean_logit_diff
        CORRUPTED_BASELINE = corrupted_logit_diff
        def ioi_metric(logits, answer_token_indices=answer_token_indices):
            return (get_logit_diff(logits, answer_token_indices) - CORRUPTED_BASELINE) / (CLEAN_BASELINE  - CORRUPTED_BASELINE)
    """),
    # "attn-only-2l" (a hub checkpoint in TransformerLens's own format) -> the stand-in;
    # torch.randint(100, 10000, ...) -> 8000 (the stand-in's vocabulary)
    "patch.induction": _d("""
        attn_only = model
        batch = 4
        seq_len = 20
        torch.manual_seed(0)
        rand_tokens_A = torch.randint(100, 8000, (batch, seq_len)).to(attn_only.cfg.device)
        rand_tokens_B = torch.randint(100, 8000, (batch, seq_len)).to(attn_only.cfg.device)
        rand_tokens_C = torch.randint(100, 8000, (batch, seq_len)).to(attn_only.cfg.device)
        bos = torch.tensor([0]*batch)[:, None].to(attn_only.cfg.device)
        clean_tokens_induction = torch.cat([bos, rand_tokens_A, rand_tokens_A], dim=1).to(attn_only.cfg.device)
        corrupted_tokens_induction = torch.cat([bos, rand_tokens_A, rand_tokens_B], dim=1).to(attn_only.cfg.device)
        clean_logits_induction, clean_cache_induction = attn_only.run_with_cache(clean_tokens_induction)
        def induction_loss(logits, answer_token_indices=rand_tokens_A):
            seq_len = answer_token_indices.shape[1]
            final_logits = logits[:, -seq_len:-1]
            final_log_probs = final_logits.log_softmax(-1)
            return final_log_probs.gather(-1, answer_token_indices[:, 1:].unsqueeze(-1)).mean()
    """),
    # ---- Head_Detector_Demo (its copy of transformer_lens.head_detector, imported as its text says)
    "heads.imports": "from transformer_lens.head_detector import detect_head",
    "heads.prompt": 'prompt = "The head detector feature for TransformerLens allows users to check for various '
                    'common heads automatically, reducing the cost of discovery."',
    "heads.pattern": _d("""
        prompt = "The following lexical sequence has been optimised for the maximisation of loquaciously multitoken letter combinations."
        tokens = model.to_str_tokens(prompt)
        detection_pattern = []
        for i in range(2):
          detection_pattern.append([0 for t in tokens])
        for i in range(2, len(tokens)):
            current_token = i
            previous_tokens_in_word = 0
            while not tokens[current_token].startswith(' '):
              previous_tokens_in_word += 1
              current_token -= 1
            detection_pattern.append([0 for j in range(i - previous_tokens_in_word)] + [1 for j in range(previous_tokens_in_word)] + [0 for j in range(i+1, len(tokens)+1)])
        detection_pattern = torch.as_tensor(detection_pattern).to(device)
    """),
    # ---- SAELens tutorials
    "sae.imports": "from sae_lens import SAE",
    "sae.gpt2": _d("""
        sae = SAE.from_pretrained(
            release="gpt2-small-res-jb",
            sae_id="blocks.8.hook_resid_pre",
            device=device,
        )
    """),
    # load_dataset("NeelNanda/pile-10k") needs the hub: a small dataset of the same form
    "sae.dataset": _d("""
        import datasets
        _texts = ["It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
                  "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
                  "Mr Darcy walked in. Mr Darcy walked out again, and nobody noticed.",
                  "When John and Mary went to the shops, John gave the bag to Mary."]
        dataset = datasets.Dataset.from_dict({"text": [_texts[i % 4] + " " + _texts[(i * 7) % 4] for i in range(400)]})
    """),
    "sae.tokens": _d("""
        from transformer_lens.utils import tokenize_and_concatenate
        token_dataset = tokenize_and_concatenate(
            dataset=dataset,
            tokenizer=model.tokenizer,
            streaming=True,
            max_length=sae.cfg.metadata.context_size,
            add_bos_token=sae.cfg.metadata.prepend_bos,
        )
        batch_tokens = torch.as_tensor(np.asarray(token_dataset["tokens"][:32]))
        _, cache = model.run_with_cache(batch_tokens, prepend_bos=True)
        feature_acts = sae.encode(cache[sae.cfg.metadata.hook_name])
        sae_out = sae.decode(feature_acts)
    """),
    "sae.hooks": _d("""
        from transformer_lens import utils
        def reconstr_hook(activation, hook, sae_out):
            return sae_out
        def zero_abl_hook(activation, hook):
            return torch.zeros_like(activation)
        example_prompt = "When John and Mary went to the shops, John gave the bag to"
        example_answer = " Mary"
        hook_name = sae.cfg.metadata.hook_name
    """),
    # using_an_sae_as_a_steering_vector: "gemma-2b" -> the stand-in; layer 6 -> 1 where it names a hook
    "steer.layer": "layer = 6",
    "steer.sae": _d("""
        layer = 6
        sae = SAE.from_pretrained(
            release="gemma-2b-res-jb", sae_id=f"blocks.{layer}.hook_resid_post", device=device
        )
        hook_point = sae.cfg.metadata.hook_name
        layer = 1
        sv_prompt = " The Golden Gate Bridge"
        sv_logits, cache = model.run_with_cache(sv_prompt, prepend_bos=True)
        tokens = model.to_tokens(sv_prompt)
        sv_feature_acts = sae.encode(cache[hook_point])
        sae_out = sae.decode(sv_feature_acts)
    """),
    "steer.generate": _d("""
        steering_vector = sae.W_dec[1020]
        example_prompt = "What is the most iconic structure known to man?"
        coeff = 300
        sampling_kwargs = dict(temperature=1.0, top_p=0.1, freq_penalty=1.0)
        def steering_hook(resid_pre, hook):
            if resid_pre.shape[1] == 1:
                return
            position = sae_out.shape[1]
            if steering_on:
                resid_pre[:, : position - 1, :] += coeff * steering_vector
        def hooked_generate(prompt_batch, fwd_hooks=[], seed=None, **kwargs):
            if seed is not None:
                torch.manual_seed(seed)
            with model.hooks(fwd_hooks=fwd_hooks):
                tokenized = model.to_tokens(prompt_batch)
                result = model.generate(
                    stop_at_eos=False,
                    input=tokenized,
                    max_new_tokens=50,
                    do_sample=True,
                    **kwargs,
                )
            return result
        def run_generate(example_prompt):
            model.reset_hooks()
            editing_hooks = [(f"blocks.{layer}.hook_resid_post", steering_hook)]
            res = hooked_generate(
                [example_prompt] * 3, editing_hooks, seed=None, **sampling_kwargs
            )
            res_str = model.to_string(res[:, 1:])
            print(("\\n\\n" + "-" * 80 + "\\n\\n").join(res_str))
    """),
    # the path-patching cell's state: split qkv inputs on, S-inhibition heads (7, 3), (7, 9), (8, 6), (8, 10) ->
    # heads of the stand-in's last layer, one feature's direction
    "hsae.v_input": _d("""
        model.set_use_split_qkv_input(True)
        s_inhib_heads = [(3, 3), (3, 6)]
        feature_dirs = torch.ones(model.cfg.d_model) * 0.01
    """),
    # Hooked_SAE_Transformer_Demo: gpt2-small-hook-z-kk's SAEs (a .pt format) -> random SAEs on the
    # stand-in's hook_z, read from disk (HOOK_Z_SAES is given by run.py); layer 5 -> 2, 4 layers
    "hsae.model": _d("""
        from sae_lens import HookedSAETransformer, SAE
        model = HookedSAETransformer.from_pretrained("gpt2", device=device)
    """),
    "hsae.saes": _d("""
        hook_name_to_sae = {}
        for layer in range(4):
            sae = SAE.load_from_disk(HOOK_Z_SAES[layer], device=device)
            hook_name_to_sae[sae.cfg.metadata.hook_name] = sae
        def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
            final_logits = torch.as_tensor(np.asarray(logits))[:, -1, :]
            answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
            answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
            if per_prompt:
                return answer_logit_diff
            else:
                return answer_logit_diff.mean()
        original_per_prompt_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens, per_prompt=True)
        layer, s2_pos = 2, 10
        abl_layer, abl_pos = 2, 10
        sae = hook_name_to_sae[utils.get_act_name("z", layer)]
        saes = [sae]
        _, sae_cache = model.run_with_cache_with_saes(tokens, saes=saes)
        sae_acts = torch.as_tensor(np.asarray(sae_cache[utils.get_act_name("z", layer) + ".hook_sae_acts_post"][:, s2_pos, :]))
        live_feature_union = (sae_acts > 0).any(dim=0)
        all_live_features = torch.arange(sae.cfg.d_sae)[live_feature_union.cpu()]
        def ablate_sae_feature(sae_acts, hook, pos, feature_id):
            if pos is None:
                sae_acts[:, :, feature_id] = 0.0
            else:
                sae_acts[:, pos, feature_id] = 0.0
            return sae_acts
        feature_id = int(all_live_features[0])
    """),
}

# the setups a probe of each notebook starts from
_M = ("base", "tl", "gpt2")
_E = ("base", "tl", "expl.model", "expl.prompts")
_P = ("base", "tl", "patch.imports", "gpt2", "patch.ioi")
_H = ("base", "tl", "heads.imports", "gpt2", "heads.prompt")
_B = ("base", "tl", "sae.imports", "gpt2", "sae.gpt2")
_S = ("base", "tl", "sae.imports", "gpt2", "steer.sae")
_HS = ("base", "tl", "hsae.model", "expl.prompts")

PROBES: list[Probe] = []


def probe(id, notebook, code, setup=(), result=None, **kw):
    PROBES.append(Probe(id, notebook, _d(code), tuple(setup), result, **kw))


# ============================================================ Main_Demo
probe("main.get_device", MAIN, "device = utils.get_device()", ("base", "tl"), "str(device)", compare="exact")
probe("main.load_gpt2_small", MAIN, 'model = HookedTransformer.from_pretrained("gpt2-small", device=device)',
      ("base", "tl"), "model.cfg.n_layers", compare="exact")
probe("main.loss", MAIN, 'loss = model(model_description_text, return_type="loss")\nprint("Model loss:", loss)',
      _M + ("main.text",), "loss")
probe("main.to_tokens", MAIN, "gpt2_tokens = model.to_tokens(gpt2_text)", _M + ("main.text",), "gpt2_tokens",
      compare="exact")
probe("main.tokens_device", MAIN, "print(gpt2_tokens.device)", _M + ("main.text",))
probe("main.run_with_cache_remove_batch_dim", MAIN,
      "gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True)",
      _M + ("main.text",), "(gpt2_logits, gpt2_cache['blocks.1.hook_resid_post'])")
probe("main.cache_pattern_attn", MAIN, _d("""
    print(type(gpt2_cache))
    attention_pattern = gpt2_cache["pattern", 0, "attn"]
    print(attention_pattern.shape)
"""), _M + ("main.text", "main.cache"), "attention_pattern")
probe("main.to_str_tokens", MAIN, "gpt2_str_tokens = model.to_str_tokens(gpt2_text)", _M + ("main.text",),
      "gpt2_str_tokens", compare="exact")
probe("main.run_with_cache_stop_at_layer", MAIN, _d("""
    _, gpt2_attn_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True, stop_at_layer=attn_layer + 1, names_filter=[attn_hook_name])
    gpt2_attn = gpt2_attn_cache[attn_hook_name]
"""), _M + ("main.text", "main.cache"), "gpt2_attn")
probe("main.torch_equal_pattern", MAIN, _d("""
    _, gpt2_attn_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True, stop_at_layer=attn_layer + 1, names_filter=[attn_hook_name])
    gpt2_attn = gpt2_attn_cache[attn_hook_name]
    assert torch.equal(gpt2_attn, attention_pattern)
"""), _M + ("main.text", "main.cache"))
# head_index_to_ablate = 8 in the notebook: the stand-in has 8 heads
probe("main.run_with_hooks_v_ablation", MAIN, _d("""
    layer_to_ablate = 0
    head_index_to_ablate = 7

    def head_ablation_hook(
        value: Float[torch.Tensor, "batch pos head_index d_head"],
        hook: HookPoint
    ) -> Float[torch.Tensor, "batch pos head_index d_head"]:
        print(f"Shape of the value tensor: {value.shape}")
        value[:, :, head_index_to_ablate, :] = 0.
        return value

    original_loss = model(gpt2_tokens, return_type="loss")
    ablated_loss = model.run_with_hooks(
        gpt2_tokens,
        return_type="loss",
        fwd_hooks=[(
            utils.get_act_name("v", layer_to_ablate),
            head_ablation_hook
            )]
        )
"""), _M + ("main.text",), "(original_loss, ablated_loss)")
probe("main.loss_item", MAIN, _d("""
    original_loss = model(gpt2_tokens, return_type="loss")
    print(f"Original Loss: {original_loss.item():.3f}")
"""), _M + ("main.text",), "original_loss.item()")
probe("main.to_single_token", MAIN, _d("""
    correct_index = model.to_single_token(" John")
    incorrect_index = model.to_single_token(" Mary")
"""), _M, "(correct_index, incorrect_index)", compare="exact")
probe("main.ioi_run_with_cache", MAIN, _d("""
    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_logit_diff = logits_to_logit_diff(clean_logits)
    print(f"Clean logit difference: {clean_logit_diff.item():.3f}")
"""), _M + ("main.ioi",), "clean_logit_diff")
probe("main.model_forward_tokens", MAIN, _d("""
    corrupted_logits = model(corrupted_tokens)
    corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
    print(f"Corrupted logit difference: {corrupted_logit_diff.item():.3f}")
"""), _M + ("main.ioi",), "corrupted_logit_diff")
probe("main.cfg_device_zeros", MAIN, _d("""
    num_positions = len(clean_tokens[0])
    ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
"""), _M + ("main.ioi",), "ioi_patching_result")
probe("main.resid_patching_hook", MAIN, _d("""
    def residual_stream_patching_hook(
        resid_pre: Float[torch.Tensor, "batch pos d_model"],
        hook: HookPoint,
        position: int
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    temp_hook_fn = partial(residual_stream_patching_hook, position=position)
    patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
        (utils.get_act_name("resid_pre", layer), temp_hook_fn)
    ])
"""), _M + ("main.ioi",), "patched_logits")
probe("main.resid_patching_loop", MAIN, _d("""
    def residual_stream_patching_hook(
        resid_pre: Float[torch.Tensor, "batch pos d_model"],
        hook: HookPoint,
        position: int
    ) -> Float[torch.Tensor, "batch pos d_model"]:
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    num_positions = len(clean_tokens[0])
    ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)

    for layer in tqdm.tqdm(range(model.cfg.n_layers)):
        for position in range(num_positions):
            temp_hook_fn = partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
                (utils.get_act_name("resid_pre", layer), temp_hook_fn)
            ])
            patched_logit_diff = logits_to_logit_diff(patched_logits).detach()
            ioi_patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff)/(clean_logit_diff - corrupted_logit_diff)
"""), _M + ("main.ioi",), "ioi_patching_result")
probe("main.to_str_tokens_tokens", MAIN,
      'token_labels = [f"{token}_{index}" for index, token in enumerate(model.to_str_tokens(clean_tokens))]',
      _M + ("main.ioi",), "token_labels", compare="exact")
probe("main.utils_to_numpy", MAIN, "arr = utils.to_numpy(ioi_patching_result)", _M + ("main.ioi", "main.ioi_result"),
      "arr", note="imshow's utils.to_numpy(tensor) on the cell's torch result")
probe("main.forward_torch_tokens", MAIN, "repeated_logits = model(repeated_tokens)", _M + ("main.repeated",),
      "repeated_logits")
probe("main.loss_fn_per_token", MAIN, _d("""
    repeated_logits = model(repeated_tokens)
    correct_log_probs = model.loss_fn(repeated_logits, repeated_tokens, per_token=True)
    loss_by_position = einops.reduce(correct_log_probs, "batch position -> position", "mean")
"""), _M + ("main.repeated",), "loss_by_position")
probe("main.induction_score_hook", MAIN, _d("""
    induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)
    def induction_score_hook(
        pattern: Float[torch.Tensor, "batch head_index dest_pos source_pos"],
        hook: HookPoint,
    ):
        induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1-seq_len)
        induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
        induction_score_store[hook.layer(), :] = induction_score

    pattern_hook_names_filter = lambda name: name.endswith("pattern")

    model.run_with_hooks(
        repeated_tokens,
        return_type=None,
        fwd_hooks=[(
            pattern_hook_names_filter,
            induction_score_hook
        )]
    )
"""), _M + ("main.repeated",), "induction_score_store")
probe("main.to_str_tokens_random_sequence", MAIN, _d("""
    size = (1, 20)
    input_tensor = torch.randint(1000, 8000, size)
    single_random_sequence = input_tensor.to(model.cfg.device)
    repeated_random_sequence = einops.repeat(single_random_sequence, "batch seq_len -> batch (2 seq_len)")
    str_tokens = model.to_str_tokens(repeated_random_sequence)
"""), _M + ("main.repeated",), "str_tokens", compare="exact")
probe("main.load_distilgpt2", MAIN, 'distilgpt2 = HookedTransformer.from_pretrained("distilgpt2", device=device)',
      ("base", "tl"), "distilgpt2.cfg.n_heads", compare="exact")
probe("main.named_parameters_block0", MAIN, _d("""
    out = []
    for name, param in model.named_parameters():
        if name.startswith("blocks.0."):
            print(name, param.shape)
            out.append((name, tuple(param.shape)))
"""), _M, "out", compare="exact", note="out collects what the cell prints")
probe("main.named_parameters_top", MAIN, _d("""
    out = []
    for name, param in model.named_parameters():
        if not name.startswith("blocks"):
            print(name, param.shape)
            out.append((name, tuple(param.shape)))
"""), _M, "out", compare="exact", note="out collects what the cell prints")
probe("main.hook_names_filter", MAIN, _d("""
    test_prompt = "The quick brown fox jumped over the lazy dog"
    print("Num tokens:", len(model.to_tokens(test_prompt)[0]))
    seen = []
    def print_name_shape_hook_function(activation, hook):
        print(hook.name, activation.shape)
        seen.append((hook.name, tuple(activation.shape)))

    not_in_late_block_filter = lambda name: name.startswith("blocks.0.") or not name.startswith("blocks")

    model.run_with_hooks(
        test_prompt,
        return_type=None,
        fwd_hooks=[(not_in_late_block_filter, print_name_shape_hook_function)],
    )
"""), _M, "sorted(set(seen))", compare="exact",
      note="seen collects what the hook prints (as a set: TransformerLens calls ln1's hooks once per q, k, v)")
probe("main.unembed_b_U", MAIN, "unembed_bias = model.unembed.b_U", _M, "unembed_bias")
probe("main.b_U_sort", MAIN, _d("""
    unembed_bias = model.unembed.b_U
    bias_values, bias_indices = unembed_bias.sort(descending=True)
"""), _M, "bias_values")
probe("main.to_string_index", MAIN, _d("""
    top_k = 20
    out = []
    for i in range(top_k):
        out.append(repr(model.to_string(bias_indices[i])))
"""), _M + ("main.bias_indices",), "out", compare="exact", note="out collects what the cell prints")
probe("main.b_U_single_token", MAIN, _d("""
    john_bias = model.unembed.b_U[model.to_single_token(' John')]
    mary_bias = model.unembed.b_U[model.to_single_token(' Mary')]

    print(f"John bias: {john_bias.item():.4f}")
    print(f"Mary bias: {mary_bias.item():.4f}")
"""), _M, "(john_bias, mary_bias)")
probe("main.torch_exp_bias", MAIN, _d("""
    john_bias = model.unembed.b_U[model.to_single_token(' John')]
    mary_bias = model.unembed.b_U[model.to_single_token(' Mary')]
    print(f"Prob ratio bias: {torch.exp(john_bias - mary_bias).item():.4f}x")
"""), _M)
probe("main.to_str_tokens_example", MAIN, "example_text_str_tokens = model.to_str_tokens(example_text)",
      _M + ("main.example",), "example_text_str_tokens", compare="exact")
probe("main.to_tokens_example", MAIN, "example_text_tokens = model.to_tokens(example_text)\nprint(example_text_tokens)",
      _M + ("main.example",), "example_text_tokens", compare="exact")
probe("main.to_tokens_padded_batch", MAIN, _d("""
    example_multi_text = ["The cat sat on the mat.", "The cat sat on the mat really hard."]
    example_multi_text_tokens = model.to_tokens(example_multi_text)
"""), _M, "example_multi_text_tokens", compare="exact")
probe("main.forward_text", MAIN, _d("""
    cat_text = "The cat sat on the mat."
    cat_logits = model(cat_text)
"""), _M, "cat_logits")
probe("main.logits_softmax", MAIN, _d("""
    cat_text = "The cat sat on the mat."
    cat_logits = model(cat_text)
    cat_probs = cat_logits.softmax(dim=-1)
    print(f"Probability tensor shape [batch, position, d_vocab] == {cat_probs.shape}")

    capital_the_token_index = model.to_single_token(" The")
    print(f"| The| probability: {cat_probs[0, -1, capital_the_token_index].item():.2%}")
"""), _M, "cat_probs")
probe("main.to_string_int", MAIN,
      'print(f"Token 256 - the most common pair of ASCII characters: |{model.to_string(256)}|")\ns = model.to_string(256)',
      _M, "s", compare="exact")
probe("main.to_string_squeeze", MAIN,
      'print(f"De-Tokenizing the example tokens: {model.to_string(example_text_tokens.squeeze())}")\n'
      's = model.to_string(example_text_tokens.squeeze())', _M + ("main.example",), "s", compare="exact")
probe("main.get_token_position_bos", MAIN, _d("""
    a = model.get_token_position(" cat", "The cat sat on the mat")
    b = model.get_token_position(" cat", "The cat sat on the mat", prepend_bos=False)
    print("With BOS:", a)
    print("Without BOS:", b)
"""), _M, "(a, b)", compare="exact")
probe("main.get_token_position_mode", MAIN, _d("""
    a = model.get_token_position(
        " cat",
        "The cat sat on the mat. The mat sat on the cat.",
        mode="first")
    b = model.get_token_position(
        " cat",
        "The cat sat on the mat. The mat sat on the cat.",
        mode="last")
"""), _M, "(a, b)", compare="exact")
probe("main.to_str_tokens_numbers", MAIN, _d("""
    a = model.to_str_tokens("2342+2017=21445")
    b = model.to_str_tokens("1000+1000000=999999")
"""), _M, "(a, b)", compare="exact")
probe("main.forward_prepend_bos_shape", MAIN, _d("""
    a = model("Hello World").shape
    b = model("Hello World", prepend_bos=True).shape
    c = model("Hello World", prepend_bos=False).shape
"""), _M, "(tuple(a), tuple(b), tuple(c))", compare="exact")
probe("main.prepend_bos_logit_item", MAIN, _d("""
    ioi_logits_with_bos = model("Claire and Mary went to the shops, then Mary gave a bottle of milk to", prepend_bos=True)
    mary_logit_with_bos = ioi_logits_with_bos[0, -1, model.to_single_token(" Mary")].item()
    claire_logit_with_bos = ioi_logits_with_bos[0, -1, model.to_single_token(" Claire")].item()
    ioi_logits_without_bos = model("Claire and Mary went to the shops, then Mary gave a bottle of milk to", prepend_bos=False)
    mary_logit_without_bos = ioi_logits_without_bos[0, -1, model.to_single_token(" Mary")].item()
    claire_logit_without_bos = ioi_logits_without_bos[0, -1, model.to_single_token(" Claire")].item()
"""), _M, "(mary_logit_with_bos, claire_logit_with_bos, mary_logit_without_bos, claire_logit_without_bos)")
probe("main.to_str_tokens_no_bos", MAIN, _d("""
    a = model.to_str_tokens(' Claire', prepend_bos=False)
    b = model.to_str_tokens('Claire', prepend_bos=False)
"""), _M, "(a, b)", compare="exact")
probe("main.factored_matrix_norm", MAIN, _d("""
    AB_factor = FactoredMatrix(A, B)
    print(AB.norm())
    print(AB_factor.norm())
"""), _M + ("main.AB",), "AB_factor.norm()")
probe("main.factored_matrix_dims", MAIN,
      'print(f"Right dimension: {AB_factor.rdim}, Left dimension: {AB_factor.ldim}, Hidden dimension: {AB_factor.mdim}")',
      _M + ("main.AB",), "(AB_factor.rdim, AB_factor.ldim, AB_factor.mdim)", compare="exact")
probe("main.factored_matrix_eigenvalues", MAIN, "ev = AB_factor.eigenvalues\nprint(ev)", _M + ("main.AB",), "ev",
      compare="eig")
probe("main.factored_matrix_S", MAIN, "S = AB_factor.S\nprint(S)", _M + ("main.AB",), "S")
probe("main.factored_matrix_matmul", MAIN, _d("""
    ABC_factor = AB_factor @ C
    print("Factored:", ABC_factor.shape, ABC_factor.norm().round(decimals=3))
"""), _M + ("main.AB",), "ABC_factor.norm()")
probe("main.factored_matrix_matmul_dims", MAIN, _d("""
    ABC_factor = AB_factor @ C
    print(f"Right dimension: {ABC_factor.rdim}, Left dimension: {ABC_factor.ldim}, Hidden dimension: {ABC_factor.mdim}")
"""), _M + ("main.AB",), "(tuple(ABC_factor.shape), ABC_factor.rdim, ABC_factor.ldim, ABC_factor.mdim)",
      compare="exact")
probe("main.factored_matrix_AB", MAIN, "AB_unfactored = AB_factor.AB", _M + ("main.AB",), "AB_unfactored")
probe("main.factored_matrix_isclose", MAIN,
      "AB_unfactored = AB_factor.AB\nprint(torch.isclose(AB_unfactored, AB).all())", _M + ("main.AB",))
probe("main.model_OV", MAIN, "OV_circuit_all_heads = model.OV\nprint(OV_circuit_all_heads)", _M,
      "OV_circuit_all_heads")
probe("main.OV_eigenvalues", MAIN, _d("""
    OV_circuit_all_heads = model.OV
    OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
    print(OV_circuit_all_heads_eigenvalues.shape)
    print(OV_circuit_all_heads_eigenvalues.dtype)
"""), _M, "OV_circuit_all_heads_eigenvalues", compare="eig")
probe("main.OV_copying_score", MAIN, _d("""
    OV_circuit_all_heads = model.OV
    OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
    OV_copying_score = OV_circuit_all_heads_eigenvalues.sum(dim=-1).real / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1)
"""), _M, "OV_copying_score")
probe("main.full_OV_circuit", MAIN, _d("""
    OV_circuit_all_heads = model.OV
    full_OV_circuit = model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U
    print(full_OV_circuit)
"""), _M, "full_OV_circuit")
probe("main.full_OV_eigenvalues", MAIN, _d("""
    full_OV_circuit = model.embed.W_E @ model.OV @ model.unembed.W_U
    full_OV_circuit_eigenvalues = full_OV_circuit.eigenvalues
    print(full_OV_circuit_eigenvalues.shape)
    print(full_OV_circuit_eigenvalues.dtype)
"""), _M, "full_OV_circuit_eigenvalues", compare="eig")
probe("main.generate_sampled", MAIN, _d("""
    text = model.generate("(CNN) President Barack Obama caught in embarrassing new scandal\\n", max_new_tokens=50, temperature=0.7, prepend_bos=True)
"""), _M, "text", numeric=False, note="sampled: only that it runs")
probe("main.hooked_root_module", MAIN, _d("""
    import torch.nn as nn
    from transformer_lens.hook_points import HookedRootModule, HookPoint


    class SquareThenAdd(nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = nn.Parameter(torch.tensor(offset))
            self.hook_square = HookPoint()

        def forward(self, x):
            square = self.hook_square(x * x)
            return self.offset + square


    class TwoLayerModel(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.layer1 = SquareThenAdd(3.0)
            self.layer2 = SquareThenAdd(-4.0)
            self.hook_in = HookPoint()
            self.hook_mid = HookPoint()
            self.hook_out = HookPoint()
            super().setup()

        def forward(self, x):
            x_in = self.hook_in(x)
            x_mid = self.hook_mid(self.layer1(x_in))
            x_out = self.hook_out(self.layer2(x_mid))
            return x_out


    model = TwoLayerModel()
    out, cache = model.run_with_cache(torch.tensor(5.0))
    print("Model output:", out.item())
    for key in cache:
        print(f"Value cached at hook {key}", cache[key].item())
"""), ("base",), "out.item()")
probe("main.checkpoint_labels", MAIN, _d("""
    from transformer_lens.loading_from_pretrained import get_checkpoint_labels
    for model_name in ["stanford-gpt2-small-a"]:
        checkpoint_labels, checkpoint_label_type = get_checkpoint_labels(model_name)
"""), ("base",), "(list(checkpoint_labels), checkpoint_label_type)", compare="exact",
      note="the cell's other names (attn-only-2l, solu-*) list their checkpoints on the hub")

# ============================================================ Exploratory_Analysis_Demo
probe("expl.load_refactored", EXPL, _d("""
    model = HookedTransformer.from_pretrained(
        "gpt2-small",
        center_unembed=True,
        center_writing_weights=True,
        fold_ln=True,
        refactor_factored_attn_matrices=True,
    )
"""), ("base", "tl"), "model.cfg.d_model", compare="exact")
probe("expl.get_device", EXPL, "device: torch.device = utils.get_device()", ("base", "tl"))
probe("expl.test_prompt", EXPL, _d("""
    example_prompt = "After John and Mary went to the store, John gave a bottle of milk to"
    example_answer = " Mary"
    utils.test_prompt(example_prompt, example_answer, model, prepend_bos=True)
"""), ("base", "tl", "expl.model"), numeric=False, note="prints (rich markup in TransformerLens)")
probe("expl.to_single_token_answers", EXPL, _d("""
    prompt_format = [
        "When John and Mary went to the shops,{} gave the bag to",
        "When Tom and James went to the park,{} gave the ball to",
        "When Dan and Sid went to the shops,{} gave an apple to",
        "After Martin and Amy went to the park,{} gave a drink to",
    ]
    names = [
        (" Mary", " John"),
        (" Tom", " James"),
        (" Dan", " Sid"),
        (" Martin", " Amy"),
    ]
    prompts = []
    answers = []
    answer_tokens = []
    for i in range(len(prompt_format)):
        for j in range(2):
            answers.append((names[i][j], names[i][1 - j]))
            answer_tokens.append(
                (
                    model.to_single_token(answers[-1][0]),
                    model.to_single_token(answers[-1][1]),
                )
            )
            prompts.append(prompt_format[i].format(answers[-1][1]))
    answer_tokens = torch.tensor(answer_tokens).to(device)
"""), ("base", "tl", "expl.model"), "answer_tokens", compare="exact")
probe("expl.to_str_tokens_prompts", EXPL, _d("""
    out = []
    for prompt in prompts:
        str_tokens = model.to_str_tokens(prompt)
        print("Prompt length:", len(str_tokens))
        print("Prompt as tokens:", str_tokens)
        out.append(str_tokens)
"""), _E, "out", compare="exact")
probe("expl.to_tokens_batch", EXPL, "tokens = model.to_tokens(prompts, prepend_bos=True)", _E, "tokens",
      compare="exact")
probe("expl.run_with_cache_batch", EXPL, "original_logits, cache = model.run_with_cache(tokens)", _E,
      "(original_logits, cache['blocks.3.hook_resid_post'])")
probe("expl.logit_diff_gather", EXPL, _d("""
    def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
        final_logits = logits[:, -1, :]
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
        if per_prompt:
            return answer_logit_diff
        else:
            return answer_logit_diff.mean()
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)
"""), _E, "original_average_logit_diff")
probe("expl.tokens_to_residual_directions", EXPL, _d("""
    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    print("Answer residual directions shape:", answer_residual_directions.shape)
    logit_diff_directions = (
        answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    )
"""), _E, "logit_diff_directions")
probe("expl.cache_resid_post_neg_layer", EXPL, _d("""
    final_residual_stream = cache["resid_post", -1]
    final_token_residual_stream = final_residual_stream[:, -1, :]
"""), _E, "final_token_residual_stream")
probe("expl.apply_ln_to_stack", EXPL, _d("""
    final_residual_stream = cache["resid_post", -1]
    final_token_residual_stream = final_residual_stream[:, -1, :]
    scaled_final_token_residual_stream = cache.apply_ln_to_stack(
        final_token_residual_stream, layer=-1, pos_slice=-1
    )
"""), _E, "scaled_final_token_residual_stream")
probe("expl.einsum_logit_diff", EXPL, _d("""
    final_residual_stream = cache["resid_post", -1]
    final_token_residual_stream = final_residual_stream[:, -1, :]
    scaled_final_token_residual_stream = cache.apply_ln_to_stack(
        final_token_residual_stream, layer=-1, pos_slice=-1
    )
    average_logit_diff = einsum(
        "batch d_model, batch d_model -> ",
        scaled_final_token_residual_stream,
        logit_diff_directions,
    ) / len(prompts)
    print("Calculated average logit diff:", round(average_logit_diff.item(), 3))
"""), _E + ("expl.logit_diff",), "average_logit_diff")
probe("expl.accumulated_resid", EXPL, _d("""
    accumulated_residual, labels = cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=-1, return_labels=True
    )
"""), _E, "(accumulated_residual, labels)")
probe("expl.residual_stack_to_logit_diff", EXPL, _d("""
    def residual_stack_to_logit_diff(
        residual_stack: Float[torch.Tensor, "components batch d_model"],
        cache: ActivationCache,
    ) -> float:
        scaled_residual_stack = cache.apply_ln_to_stack(
            residual_stack, layer=-1, pos_slice=-1
        )
        return einsum(
            "... batch d_model, batch d_model -> ...",
            scaled_residual_stack,
            logit_diff_directions,
        ) / len(prompts)
    accumulated_residual, labels = cache.accumulated_resid(
        layer=-1, incl_mid=True, pos_slice=-1, return_labels=True
    )
    logit_lens_logit_diffs = residual_stack_to_logit_diff(accumulated_residual, cache)
"""), _E + ("expl.logit_diff",), "logit_lens_logit_diffs")
probe("expl.decompose_resid", EXPL, _d("""
    per_layer_residual, labels = cache.decompose_resid(
        layer=-1, pos_slice=-1, return_labels=True
    )
"""), _E, "(per_layer_residual, labels)")
probe("expl.stack_head_results", EXPL, _d("""
    per_head_residual, labels = cache.stack_head_results(
        layer=-1, pos_slice=-1, return_labels=True
    )
"""), _E, "(per_head_residual, labels)")
probe("expl.rearrange_cfg", EXPL, _d("""
    per_head_logit_diffs = einops.rearrange(
        per_head_logit_diffs,
        "(layer head_index) -> layer head_index",
        layer=model.cfg.n_layers,
        head_index=model.cfg.n_heads,
    )
"""), _E + ("expl.logit_diff",), "per_head_logit_diffs")
probe("expl.cache_attn_head", EXPL, _d("""
    patterns = []
    for head in heads:
        layer = head // model.cfg.n_heads
        head_index = head % model.cfg.n_heads
        labels.append(f"L{layer}H{head_index}")
        patterns.append(local_cache["attn", layer][batch_index, head_index])
    str_tokens = model.to_str_tokens(local_tokens)
"""), _E + ("expl.heads",), "(patterns, str_tokens)")
probe("expl.torch_stack_patterns", EXPL, _d("""
    patterns = []
    for head in heads:
        layer = head // model.cfg.n_heads
        head_index = head % model.cfg.n_heads
        patterns.append(local_cache["attn", layer][batch_index, head_index])
    patterns: Float[torch.Tensor, "head_index dest_pos src_pos"] = torch.stack(
        patterns, dim=0
    )
"""), _E + ("expl.heads",), "patterns")
probe("expl.corrupted_run_with_cache", EXPL, _d("""
    corrupted_prompts = []
    for i in range(0, len(prompts), 2):
        corrupted_prompts.append(prompts[i + 1])
        corrupted_prompts.append(prompts[i])
    corrupted_tokens = model.to_tokens(corrupted_prompts, prepend_bos=True)
    corrupted_logits, corrupted_cache = model.run_with_cache(
        corrupted_tokens, return_type="logits"
    )
"""), _E, "corrupted_logits")
probe("expl.to_string_batch", EXPL, "s = model.to_string(corrupted_tokens)", _E + ("expl.corrupted",), "s",
      compare="exact")
probe("expl.patch_resid_pre", EXPL, _d("""
    hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
    patched_logits = model.run_with_hooks(
        corrupted_tokens,
        fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)],
        return_type="logits",
    )
"""), _E + ("expl.corrupted",), "patched_logits")
probe("expl.patch_attn_out", EXPL, _d("""
    hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
    patched_attn_logits = model.run_with_hooks(
        corrupted_tokens,
        fwd_hooks=[(utils.get_act_name("attn_out", layer), hook_fn)],
        return_type="logits",
    )
"""), _E + ("expl.corrupted",), "patched_attn_logits")
probe("expl.patch_mlp_out", EXPL, _d("""
    hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
    patched_mlp_logits = model.run_with_hooks(
        corrupted_tokens,
        fwd_hooks=[(utils.get_act_name("mlp_out", layer), hook_fn)],
        return_type="logits",
    )
"""), _E + ("expl.corrupted",), "patched_mlp_logits")
probe("expl.patch_head_z", EXPL, _d("""
    hook_fn = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
    patched_logits = model.run_with_hooks(
        corrupted_tokens,
        fwd_hooks=[(utils.get_act_name("z", layer, "attn"), hook_fn)],
        return_type="logits",
    )
"""), _E + ("expl.corrupted",), "patched_logits")
probe("expl.patch_head_v", EXPL, _d("""
    hook_fn = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
    patched_logits = model.run_with_hooks(
        corrupted_tokens,
        fwd_hooks=[(utils.get_act_name("v", layer, "attn"), hook_fn)],
        return_type="logits",
    )
"""), _E + ("expl.corrupted",), "patched_logits")
probe("expl.patch_head_pattern", EXPL, _d("""
    hook_fn = partial(patch_head_pattern, head_index=head_index, clean_cache=cache)
    patched_logits = model.run_with_hooks(
        corrupted_tokens,
        fwd_hooks=[(utils.get_act_name("attn", layer, "attn"), hook_fn)],
        return_type="logits",
    )
"""), _E + ("expl.corrupted",), "patched_logits")
probe("expl.patch_loop_logit_diff", EXPL, _d("""
    def normalize_patched_logit_diff(patched_logit_diff):
        return (patched_logit_diff - corrupted_average_logit_diff) / (
            original_average_logit_diff - corrupted_average_logit_diff
        )
    patched_residual_stream_diff = torch.zeros(
        model.cfg.n_layers, tokens.shape[1], device=device, dtype=torch.float32
    )
    for layer in range(model.cfg.n_layers):
        for position in range(tokens.shape[1]):
            hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
            patched_logits = model.run_with_hooks(
                corrupted_tokens,
                fwd_hooks=[(utils.get_act_name("resid_pre", layer), hook_fn)],
                return_type="logits",
            )
            patched_logit_diff = logits_to_ave_logit_diff(patched_logits, answer_tokens)

            patched_residual_stream_diff[layer, position] = normalize_patched_logit_diff(
                patched_logit_diff
            )
"""), _E + ("expl.logit_diff", "expl.corrupted", "expl.corrupted_diff"), "patched_residual_stream_diff")
probe("expl.torch_topk_heads", EXPL, _d("""
    top_positive_logit_attr_heads = torch.topk(
        per_head_logit_diffs.flatten(), k=3
    ).indices
"""), _E + ("expl.logit_diff",), "top_positive_logit_attr_heads")
probe("expl.head_scores_hooks", EXPL, _d("""
    loss = model.run_with_hooks(
        repeated_tokens,
        return_type="loss",
        fwd_hooks=[
            (pattern_filter, prev_token_hook),
            (pattern_filter, duplicate_token_hook),
            (pattern_filter, induction_hook),
        ],
    )
"""), _E + ("expl.scores",), "(loss, prev_token_scores, duplicate_token_scores, induction_scores)")
probe("expl.get_corner", EXPL, _d("""
    print(torch.round(utils.get_corner(prev_token_scores).detach().cpu(), decimals=3))
"""), _E + ("expl.scores",))
probe("expl.module_hook_add_hook", EXPL, _d("""
    top_name_mover = per_head_logit_diffs.flatten().argmax().item()
    top_name_mover_layer = top_name_mover // model.cfg.n_heads
    top_name_mover_head = top_name_mover % model.cfg.n_heads

    def ablate_top_head_hook(z: Float[torch.Tensor, "batch pos head_index d_head"], hook):
        z[:, -1, top_name_mover_head, :] = 0
        return z

    model.blocks[top_name_mover_layer].attn.hook_z.add_hook(ablate_top_head_hook)
    ablated_logits, ablated_cache = model.run_with_cache(tokens)
"""), _E + ("expl.logit_diff",), "ablated_logits")
probe("expl.ablated_stack_head_results", EXPL, _d("""
    per_head_ablated_residual, labels = ablated_cache.stack_head_results(
        layer=-1, pos_slice=-1, return_labels=True
    )
"""), _E + ("expl.logit_diff", "expl.ablated"), "(per_head_ablated_residual, labels)")
probe("expl.reshape_cfg", EXPL, _d("""
    per_head_ablated_logit_diffs = residual_stack_to_logit_diff(
        per_head_residual, ablated_cache
    )
    per_head_ablated_logit_diffs = per_head_ablated_logit_diffs.reshape(
        model.cfg.n_layers, model.cfg.n_heads
    )
"""), _E + ("expl.logit_diff", "expl.ablated"), "per_head_ablated_logit_diffs")
probe("expl.ln_scale_ratio", EXPL, _d("""
    ratio = round(
        (
            cache["ln_final.hook_scale"][:, -1]
            / ablated_cache["ln_final.hook_scale"][:, -1]
        )
        .mean()
        .item(),
        3,
    )
"""), _E + ("expl.logit_diff", "expl.ablated"), "ratio")
probe("expl.ln_scale_detach", EXPL, _d("""
    print(
        "Ablation LN scale",
        ablated_cache["ln_final.hook_scale"][:, -1].detach().cpu().round(decimals=2),
    )
"""), _E + ("expl.logit_diff", "expl.ablated"))

# ============================================================ Activation_Patching_in_TL_Demo
probe("patch.load_gpt2_small", PATCH, 'model = HookedTransformer.from_pretrained("gpt2-small")', ("base", "tl"),
      "model.cfg.n_heads", compare="exact")
probe("patch.to_tokens_index", PATCH, _d("""
    clean_tokens = model.to_tokens(prompts)
    corrupted_tokens = clean_tokens[
        [(i+1 if i%2==0 else i-1) for i in range(len(clean_tokens)) ]
        ]
    print("Clean string 0", model.to_string(clean_tokens[0]))
    print("Corrupted string 0", model.to_string(corrupted_tokens[0]))
    s = model.to_string(corrupted_tokens[0])
"""), _P, "(corrupted_tokens, s)", compare="exact")
probe("patch.answer_token_indices", PATCH, _d("""
    answer_token_indices = torch.tensor([[model.to_single_token(answers[i][j]) for j in range(2)] for i in range(len(answers))], device=model.cfg.device)
"""), _P, "answer_token_indices", compare="exact")
probe("patch.get_logit_diff", PATCH, _d("""
    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)

    clean_logit_diff = get_logit_diff(clean_logits, answer_token_indices).item()
    print(f"Clean logit diff: {clean_logit_diff:.4f}")
"""), _P, "clean_logit_diff")
probe("patch.ioi_metric", PATCH, 'print(f"Clean Baseline is 1: {ioi_metric(clean_logits).item():.4f}")', _P)
probe("patch.resid_pre", PATCH,
      "resid_pre_act_patch_results = patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, ioi_metric)",
      _P, "resid_pre_act_patch_results")
probe("patch.x_labels", PATCH, 'x = [f"{tok} {i}" for i, tok in enumerate(model.to_str_tokens(clean_tokens[0]))]',
      _P, "x", compare="exact")
probe("patch.attn_head_out_all_pos", PATCH,
      "attn_head_out_all_pos_act_patch_results = patching.get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, ioi_metric)",
      _P, "attn_head_out_all_pos_act_patch_results")
probe("patch.attn_head_out_by_pos", PATCH, _d("""
    ALL_HEAD_LABELS = [f"L{i}H{j}" for i in range(model.cfg.n_layers) for j in range(model.cfg.n_heads)]
    attn_head_out_act_patch_results = patching.get_act_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, ioi_metric)
    attn_head_out_act_patch_results = einops.rearrange(attn_head_out_act_patch_results, "layer pos head -> (layer head) pos")
"""), _P, "attn_head_out_act_patch_results")
probe("patch.block_every", PATCH,
      "every_block_result = patching.get_act_patch_block_every(model, corrupted_tokens, clean_cache, ioi_metric)",
      _P, "every_block_result")
probe("patch.attn_head_all_pos_every", PATCH,
      "every_head_all_pos_act_patch_result = patching.get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, ioi_metric)",
      _P, "every_head_all_pos_act_patch_result")
probe("patch.attn_head_by_pos_every", PATCH, _d("""
    every_head_act_patch_result = patching.get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, ioi_metric)
    every_head_act_patch_result = einops.rearrange(every_head_act_patch_result, "act_type layer pos head -> act_type (layer head) pos")
"""), _P, "every_head_act_patch_result")
probe("patch.tokenizer_bos_token_id", PATCH, _d("""
    attn_only = model
    batch = 4
    bos = torch.tensor([attn_only.tokenizer.bos_token_id]*batch)[:, None].to(attn_only.cfg.device)
"""), ("base", "tl", "gpt2"), "bos", compare="exact")
probe("patch.induction_run_with_cache", PATCH, _d("""
    clean_logits_induction, clean_cache_induction = attn_only.run_with_cache(clean_tokens_induction)
    corrupted_logits_induction, corrupted_cache_induction = attn_only.run_with_cache(corrupted_tokens_induction)
"""), _P + ("patch.induction",), "(clean_logits_induction, corrupted_logits_induction)")
probe("patch.induction_loss_log_softmax", PATCH, _d("""
    CLEAN_BASELINE_INDUCTION = induction_loss(clean_logits_induction).item()
    print("Clean baseline:", CLEAN_BASELINE_INDUCTION)
"""), _P + ("patch.induction",), "CLEAN_BASELINE_INDUCTION")
probe("patch.induction_all_pos_every", PATCH, _d("""
    every_head_all_pos_act_patch_result = patching.get_act_patch_attn_head_all_pos_every(attn_only, corrupted_tokens_induction, clean_cache_induction, induction_loss)
"""), _P + ("patch.induction",), "every_head_all_pos_act_patch_result")
probe("patch.induction_labels", PATCH, _d("""
    x = [f"{tok}_{i}" for i, tok in enumerate(attn_only.to_str_tokens(clean_tokens_induction[0]))]
    y = [f"L{l}H{h}" for l in range(attn_only.cfg.n_layers) for h in range(attn_only.cfg.n_heads)]
"""), _P + ("patch.induction",), "(x, y)", compare="exact")

# ============================================================ Head_Detector_Demo
probe("heads.load_gpt2_small", HEADS, 'model = HookedTransformer.from_pretrained("gpt2-small", device=device)',
      ("base", "tl"), "model.cfg.n_layers", compare="exact")
probe("heads.get_supported_heads", HEADS,
      "from transformer_lens.head_detector import get_supported_heads\nget_supported_heads()", _H)
probe("heads.previous_token_head", HEADS, 'head_scores = detect_head(model, prompt, "previous_token_head")', _H,
      "head_scores")
probe("heads.cache_pattern_squeeze", HEADS, _d("""
    _, cache = model.run_with_cache(prompt)
    attention_pattern = cache["pattern", 2, "attn"].squeeze(0)
    attention_pattern = einops.rearrange(attention_pattern, "heads seq1 seq2 -> seq1 seq2 heads")
    str_tokens = model.to_str_tokens(prompt)
"""), _H, "(attention_pattern, str_tokens)")
probe("heads.exclude_bos_current", HEADS,
      'head_scores = detect_head(model, prompt, "previous_token_head", exclude_bos=True, exclude_current_token=True)',
      _H, "head_scores")
probe("heads.custom_pattern_str_tokens", HEADS, _d("""
    prompt = "The following lexical sequence has been optimised for the maximisation of loquaciously multitoken letter combinations."
    tokens = model.to_str_tokens(prompt)
    print(len(tokens), tokens)
    detection_pattern = []
    for i in range(2):
      detection_pattern.append([0 for t in tokens])
    for i in range(2, len(tokens)):
        current_token = i
        previous_tokens_in_word = 0
        while not tokens[current_token].startswith(' '):
          previous_tokens_in_word += 1
          current_token -= 1
        detection_pattern.append([0 for j in range(i - previous_tokens_in_word)] + [1 for j in range(previous_tokens_in_word)] + [0 for j in range(i+1, len(tokens)+1)])
    detection_pattern = torch.as_tensor(detection_pattern).to(device)
    detection_pattern.shape
"""), _H, "detection_pattern", compare="exact")
probe("heads.custom_pattern_mul", HEADS, _d("""
    head_scores = detect_head(
        model,
        prompt,
        detection_pattern=detection_pattern,
        exclude_bos=False,
        exclude_current_token=True,
        error_measure="mul"
    )
"""), _H + ("heads.pattern",), "head_scores")
probe("heads.custom_pattern_abs", HEADS, _d("""
    head_scores = detect_head(
        model,
        prompt,
        detection_pattern=detection_pattern,
        exclude_bos=False,
        exclude_current_token=True,
        error_measure="abs"
    )
"""), _H + ("heads.pattern",), "head_scores")
probe("heads.torch_stack_scores", HEADS, _d("""
    scores = []
    for i in tqdm.tqdm(range(100)):
        scores.append(detect_head(model, prompt, detection_pattern=detection_pattern, exclude_bos=False, exclude_current_token=True, error_measure="abs"))
    scores = torch.stack(scores).mean(dim=0)
"""), _H + ("heads.pattern",), "scores")
probe("heads.prompts_previous", HEADS, _d("""
    prompts = [
        "This is the first the test prompt.",
        "This is another test prompt, being just a sequence of tokens.",
        "If you're interested in mechanistic interpretability, this is how the sausage REALLY is made."
    ]
    head_scores = detect_head(model, prompts, "previous_token_head", error_measure="abs")
"""), _H, "head_scores")
probe("heads.prompts_duplicate", HEADS, _d("""
    prompts = [
        "This is the first the test prompt.",
        "This is another test prompt, being just a sequence of tokens.",
        "If you're interested in mechanistic interpretability, this is how the sausage REALLY is made."
    ]
    head_scores = detect_head(model, prompts, "duplicate_token_head", error_measure="abs")
"""), _H, "head_scores")
probe("heads.prompts2_duplicate", HEADS, _d("""
    prompts = [
        "one two three one two three one two three",
        "1 2 3 4 5 1 2 3 4 1 2 3 1 2 3 4 5 6 7",
        "green ideas sleep furiously; green ideas don't sleep furiously"
    ]
    head_scores = detect_head(model, prompts, "duplicate_token_head", exclude_bos=False, exclude_current_token=False, error_measure="abs")
"""), _H, "head_scores")
probe("heads.prompts2_induction", HEADS, _d("""
    prompts = [
        "one two three one two three one two three",
        "1 2 3 4 5 1 2 3 4 1 2 3 1 2 3 4 5 6 7",
        "green ideas sleep furiously; green ideas don't sleep furiously"
    ]
    head_scores = detect_head(model, prompts, "induction_head", exclude_bos=False, exclude_current_token=False, error_measure="abs")
"""), _H, "head_scores")
probe("heads.ones_pattern_seq_len", HEADS, _d("""
    seq_len = len(model.to_str_tokens(prompt))
    ones_detection_pattern = torch.tril(torch.ones(seq_len, seq_len).to(device))
"""), _H, "ones_detection_pattern")
probe("heads.ones_pattern_positional", HEADS, _d("""
    seq_len = len(model.to_str_tokens(prompt))
    ones_detection_pattern = torch.tril(torch.ones(seq_len, seq_len).to(device))
    ones_head_scores = detect_head(
        model,
        prompt,
        ones_detection_pattern,
        exclude_bos=True,
        exclude_current_token=True,
    )
"""), _H, "ones_head_scores")
probe("heads.ones_pattern_abs", HEADS, _d("""
    seq_len = len(model.to_str_tokens(prompt))
    ones_detection_pattern = torch.tril(torch.ones(seq_len, seq_len).to(device))
    ones_head_scores = detect_head(
        model,
        prompt,
        ones_detection_pattern,
        exclude_bos=True,
        exclude_current_token=True,
        error_measure="abs"
    )
"""), _H, "ones_head_scores")

# ============================================================ basic_loading_and_analysing
probe("basic.load_model", BASIC, _d("""
    from transformer_lens import HookedTransformer
    from sae_lens import SAE

    model = HookedTransformer.from_pretrained("gpt2-small", device=device)
"""), ("base",), "model.cfg.d_vocab", compare="exact")
probe("basic.sae_from_pretrained", BASIC, _d("""
    sae = SAE.from_pretrained(
        release="gpt2-small-res-jb",
        sae_id="blocks.8.hook_resid_pre",
        device=device,
    )
"""), ("base", "sae.imports"), "(sae.W_enc, sae.cfg.metadata.hook_name)")
probe("basic.tokenize_and_concatenate", BASIC, _d("""
    from transformer_lens.utils import tokenize_and_concatenate

    token_dataset = tokenize_and_concatenate(
        dataset=dataset,  # type: ignore
        tokenizer=model.tokenizer,  # type: ignore
        streaming=True,
        max_length=sae.cfg.metadata.context_size,
        add_bos_token=sae.cfg.metadata.prepend_bos,
    )
"""), _B + ("sae.dataset",), "token_dataset['tokens'][:8]", compare="exact")
probe("basic.sae_eval", BASIC, "sae.eval()", _B)
probe("basic.dataset_slice_tokens", BASIC, 'batch_tokens = token_dataset[:32]["tokens"]',
      _B + ("sae.dataset", "sae.tokens"), "batch_tokens", compare="exact")
probe("basic.run_with_cache_prepend_bos", BASIC, "_, cache = model.run_with_cache(batch_tokens, prepend_bos=True)",
      _B + ("sae.dataset", "sae.tokens"), "cache[sae.cfg.metadata.hook_name]")
probe("basic.sae_encode", BASIC, "feature_acts = sae.encode(cache[sae.cfg.metadata.hook_name])",
      _B + ("sae.dataset", "sae.tokens"), "feature_acts", compare="topk")
probe("basic.sae_decode", BASIC, "sae_out = sae.decode(feature_acts)", _B + ("sae.dataset", "sae.tokens"), "sae_out", compare="topk")
probe("basic.l0_float", BASIC, _d("""
    l0 = (feature_acts[:, 1:] > 0).float().sum(-1).detach()
    print("average l0", l0.mean().item())
"""), _B + ("sae.dataset", "sae.tokens"), "l0")
probe("basic.loss_item", BASIC, 'x = model(batch_tokens, return_type="loss").item()\nprint("Orig", x)',
      _B + ("sae.dataset", "sae.tokens"), "x")
probe("basic.reconstr_hook", BASIC, _d("""
    x = model.run_with_hooks(
            batch_tokens,
            fwd_hooks=[
                (
                    sae.cfg.metadata.hook_name,
                    partial(reconstr_hook, sae_out=sae_out),
                )
            ],
            return_type="loss",
        ).item()
"""), _B + ("sae.dataset", "sae.tokens", "sae.hooks"), "x")
probe("basic.zero_abl_hook", BASIC, _d("""
    x = model.run_with_hooks(
            batch_tokens,
            return_type="loss",
            fwd_hooks=[(sae.cfg.metadata.hook_name, zero_abl_hook)],
        ).item()
"""), _B + ("sae.dataset", "sae.tokens", "sae.hooks"), "x")
probe("basic.test_prompt", BASIC, "utils.test_prompt(example_prompt, example_answer, model, prepend_bos=True)",
      _B + ("sae.hooks",), numeric=False, note="prints (rich markup in TransformerLens)")
probe("basic.run_with_cache_text", BASIC, _d("""
    logits, cache = model.run_with_cache(example_prompt, prepend_bos=True)
    tokens = model.to_tokens(example_prompt)
"""), _B + ("sae.hooks",), "(logits, tokens)")
probe("basic.sae_call", BASIC, _d("""
    logits, cache = model.run_with_cache(example_prompt, prepend_bos=True)
    sae_out = sae(cache[sae.cfg.metadata.hook_name])
"""), _B + ("sae.hooks",), "sae_out", compare="topk")
probe("basic.model_hooks_test_prompt", BASIC, _d("""
    logits, cache = model.run_with_cache(example_prompt, prepend_bos=True)
    sae_out = sae(cache[sae.cfg.metadata.hook_name])
    with model.hooks(
        fwd_hooks=[
            (
                hook_name,
                partial(reconstr_hook, sae_out=sae_out),
            )
        ]
    ):
        utils.test_prompt(example_prompt, example_answer, model, prepend_bos=True)
"""), _B + ("sae.hooks",), numeric=False, note="prints")
probe("basic.neuronpedia_quick_list", BASIC, _d("""
    from sae_lens.analysis.neuronpedia_integration import get_neuronpedia_quick_list
    test_feature_idx_gpt = list(range(10)) + [14057]
    neuronpedia_quick_list = get_neuronpedia_quick_list(sae, test_feature_idx_gpt)
"""), _B, "neuronpedia_quick_list", numeric=False, note="opens a browser (BROWSER=true here)")

# ============================================================ using_an_sae_as_a_steering_vector
probe("steer.sae_from_pretrained", STEER, _d("""
    sae = SAE.from_pretrained(
        release="gemma-2b-res-jb", sae_id=f"blocks.{layer}.hook_resid_post", device=device
    )
    hook_point = sae.cfg.metadata.hook_name
    print(hook_point)
"""), ("base", "sae.imports", "steer.layer"), "hook_point", compare="exact")
probe("steer.run_with_cache", STEER, _d("""
    sv_prompt = " The Golden Gate Bridge"
    sv_logits, cache = model.run_with_cache(sv_prompt, prepend_bos=True)
    tokens = model.to_tokens(sv_prompt)
    print(tokens)
"""), _S, "(sv_logits, tokens)")
probe("steer.encode_decode", STEER, _d("""
    sv_feature_acts = sae.encode(cache[hook_point])
    sae_out = sae.decode(sv_feature_acts)
"""), _S, "(sv_feature_acts, sae_out)", compare="topk")
probe("steer.torch_topk", STEER, "print(torch.topk(sv_feature_acts, 3))", _S)
probe("steer.neuronpedia_quick_list", STEER, _d("""
    from sae_lens.analysis.neuronpedia_integration import get_neuronpedia_quick_list

    get_neuronpedia_quick_list(
        sae=sae,
        features=torch.topk(sv_feature_acts, 3).indices.tolist(),
    )
"""), _S, numeric=False)
probe("steer.W_dec", STEER, "steering_vector = sae.W_dec[10200]", _S, "steering_vector",
      subs=(("10200", "1020"),), note="the stand-in SAE has 2048 features")
probe("steer.reset_hooks", STEER, "model.reset_hooks()", _S)
probe("steer.generate_steered", STEER, "steering_on = True\nrun_generate(example_prompt)", _S + ("steer.generate",),
      numeric=False, note="sampled (do_sample=True, top_p, freq_penalty): only that it runs")
probe("steer.generate_unsteered", STEER, "steering_on = False\nrun_generate(example_prompt)",
      _S + ("steer.generate",), numeric=False)
probe("steer.to_string_batch", STEER, _d("""
    res = model.to_tokens([example_prompt] * 3)
    res_str = model.to_string(res[:, 1:])
"""), _S + ("steer.generate",), "res_str", compare="exact")

# ============================================================ Hooked_SAE_Transformer_Demo
probe("hsae.load_to_device", HSAE, _d("""
    from sae_lens import HookedSAETransformer

    model: HookedSAETransformer = HookedSAETransformer.from_pretrained("gpt2-small").to(
        device
    )
"""), ("base",), "model.cfg.n_layers", compare="exact")
probe("hsae.to_tokens_run_with_cache", HSAE, _d("""
    tokens = model.to_tokens(prompts, prepend_bos=True)
    original_logits, cache = model.run_with_cache(tokens)
"""), _HS, "original_logits")
probe("hsae.logit_diff_print", HSAE, _d("""
    def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
        final_logits = logits[:, -1, :]
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
        if per_prompt:
            return answer_logit_diff
        else:
            return answer_logit_diff.mean()
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)
    print(f"Original average logit diff: {original_average_logit_diff}")
"""), _HS, "original_average_logit_diff")
probe("hsae.sae_hook_name", HSAE, _d("""
    hook_name_to_sae = {}
    for layer in tqdm.tqdm(range(4)):
        sae = SAE.load_from_disk(HOOK_Z_SAES[layer], device=device)
        hook_name_to_sae[sae.cfg.metadata.hook_name] = sae
    print(hook_name_to_sae.keys())
"""), _HS, "sorted(hook_name_to_sae)", compare="exact",
      note="the notebook's SAE.from_pretrained('gpt2-small-hook-z-kk', ...) -> load_from_disk of stand-ins")
probe("hsae.run_with_saes_list", HSAE, _d("""
    layers = [0, 3]
    hooked_saes = [hook_name_to_sae[utils.get_act_name("z", layer)] for layer in layers]
    logits_with_saes = model.run_with_saes(
        tokens, saes=hooked_saes, use_error_term=None
    )
"""), _HS + ("hsae.saes",), "logits_with_saes")
probe("hsae.run_with_cache_with_saes", HSAE, _d("""
    saes = [hook_name_to_sae[utils.get_act_name("z", layer)]]
    _, cache = model.run_with_cache_with_saes(tokens, saes=saes)
    sae_acts = cache[utils.get_act_name("z", layer) + ".hook_sae_acts_post"][:, s2_pos, :]
"""), _HS + ("hsae.saes",), "sae_acts")
probe("hsae.live_feature_any_dim", HSAE, _d("""
    saes = [hook_name_to_sae[utils.get_act_name("z", layer)]]
    _, cache = model.run_with_cache_with_saes(tokens, saes=saes)
    sae_acts = cache[utils.get_act_name("z", layer) + ".hook_sae_acts_post"][:, s2_pos, :]
    live_feature_mask = sae_acts > 0
    live_feature_union = live_feature_mask.any(dim=0)
"""), _HS + ("hsae.saes",), "live_feature_union")
probe("hsae.run_with_saes_single", HSAE, "logits_with_saes = model.run_with_saes(tokens, saes=sae)",
      _HS + ("hsae.saes",), "logits_with_saes")
probe("hsae.d_sae_arange", HSAE, "all_live_features = torch.arange(sae.cfg.d_sae)[live_feature_union.cpu()]",
      _HS + ("hsae.saes",), "all_live_features", compare="exact")
probe("hsae.run_with_hooks_with_saes", HSAE, _d("""
    abl_feature_logits = model.run_with_hooks_with_saes(
        tokens,
        saes=sae,
        fwd_hooks=[
            (
                utils.get_act_name("z", abl_layer) + ".hook_sae_acts_post",
                partial(ablate_sae_feature, pos=abl_pos, feature_id=feature_id),
            )
        ],
    )  # [batch, seq, vocab]
"""), _HS + ("hsae.saes",), "abl_feature_logits")
probe("hsae.acts_to_saes_add_sae", HSAE, _d("""
    print("Attached SAEs before add_sae", model.acts_to_saes)
    before = sorted(model.acts_to_saes)
    model.add_sae(sae)
    print("Attached SAEs after add_sae", model.acts_to_saes)
"""), _HS + ("hsae.saes",), "(before, sorted(model.acts_to_saes))", compare="exact")
probe("hsae.forward_with_attached", HSAE, "model.add_sae(sae)\nlogits_with_saes = model(tokens)",
      _HS + ("hsae.saes",), "logits_with_saes")
probe("hsae.torch_allclose", HSAE, _d("""
    model.add_sae(sae)
    logits_with_saes = model(tokens)
    assert not torch.allclose(original_logits, logits_with_saes, atol=1e-4)
"""), _HS + ("hsae.saes",))
probe("hsae.run_with_cache_attached", HSAE, _d("""
    model.add_sae(sae)
    _, cache = model.run_with_cache(tokens)
    sae_acts = cache[utils.get_act_name("z", layer) + ".hook_sae_acts_post"][:, s2_pos, :]
"""), _HS + ("hsae.saes",), "sae_acts")
probe("hsae.set_use_split_qkv_input", HSAE, "model.set_use_split_qkv_input(True)", _HS)
probe("hsae.W_O_rearrange", HSAE, _d("""
    W_O_cat = einops.rearrange(
        model.W_O, "n_layers n_heads d_head d_model -> n_layers (n_heads d_head) d_model"
    )
"""), _HS, "W_O_cat")
probe("hsae.feature_dirs", HSAE, _d("""
    W_O_cat = einops.rearrange(
        model.W_O, "n_layers n_heads d_head d_model -> n_layers (n_heads d_head) d_model"
    )
    feature_acts = sae_cache[utils.get_act_name("z", abl_layer) + ".hook_sae_acts_post"][
        :, abl_pos, feature_id
    ]  # [batch]
    feature_dirs = (feature_acts.unsqueeze(-1) * sae.W_dec[feature_id]) @ W_O_cat[
        abl_layer
    ]
"""), _HS + ("hsae.saes",), "feature_dirs")
probe("hsae.v_input_path_patch", HSAE, _d("""
    def path_patch_v_input(v_input, hook, feature_dirs, pos, head_index):
        v_input[:, pos, head_index, :] = v_input[:, pos, head_index, :] - feature_dirs
        return v_input

    hook_fns = [
        (
            utils.get_act_name("v_input", layer),
            partial(
                path_patch_v_input,
                feature_dirs=feature_dirs,
                pos=abl_pos,
                head_index=head,
            ),
        )
        for (layer, head) in s_inhib_heads
    ]
    path_patched_logits = model.run_with_hooks(
        tokens, return_type="logits", fwd_hooks=hook_fns
    )
"""), _HS + ("hsae.saes", "hsae.v_input"), "path_patched_logits")
probe("hsae.reset_saes", HSAE, _d("""
    model.add_sae(sae)
    model.reset_saes()
    print("Attached SAEs after reset_saes:", model.acts_to_saes)
"""), _HS + ("hsae.saes",), "len(model.acts_to_saes)", compare="exact")
probe("hsae.deepcopy_use_error_term", HSAE, _d("""
    import copy

    l5_sae = hook_name_to_sae[utils.get_act_name("z", 5)]
    l5_sae_with_error = copy.deepcopy(l5_sae)
    l5_sae_with_error.use_error_term = True
    model.add_sae(l5_sae_with_error)
    logits_with_saes = model(tokens)
"""), _HS + ("hsae.saes",), "logits_with_saes", subs=(('"z", 5)', '"z", 2)'),))
probe("hsae.torch_allclose_error_term", HSAE, _d("""
    import copy
    l5_sae_with_error = copy.deepcopy(sae)
    l5_sae_with_error.use_error_term = True
    model.add_sae(l5_sae_with_error)
    logits_with_saes = model(tokens)
    assert torch.allclose(logits_with_saes, original_logits, atol=1)
"""), _HS + ("hsae.saes",))
probe("hsae.acts_to_saes_d_sae", HSAE, _d("""
    model.add_sae(sae)
    hooked_encoder = model.acts_to_saes[utils.get_act_name("z", layer)]
    d_sae = hooked_encoder.cfg.d_sae
"""), _HS + ("hsae.saes",), "d_sae", compare="exact")
probe("hsae.hook_attached_acts_post", HSAE, _d("""
    model.add_sae(sae)
    abl_feature_logits = model.run_with_hooks(
        tokens,
        return_type="logits",
        fwd_hooks=[
            (
                utils.get_act_name("z", abl_layer) + ".hook_sae_acts_post",
                partial(ablate_sae_feature, pos=abl_pos, feature_id=feature_id),
            )
        ],
    )  # [batch, seq, vocab]
"""), _HS + ("hsae.saes",), "abl_feature_logits")
probe("hsae.hook_sae_error", HSAE, _d("""
    import copy
    l5_sae_with_error = copy.deepcopy(sae)
    l5_sae_with_error.use_error_term = True
    model.add_sae(l5_sae_with_error)
    def able_sae_error(sae_error, hook, pos):
        if pos is None:
            sae_error = 0.0
        else:
            sae_error[:, pos, ...] = 0.0
        return sae_error


    abl_error_logits = model.run_with_hooks(
        tokens,
        return_type="logits",
        fwd_hooks=[
            (
                utils.get_act_name("z", abl_layer) + ".hook_sae_error",
                partial(able_sae_error, pos=abl_pos),
            )
        ],
    )  # [batch, seq, vocab]
"""), _HS + ("hsae.saes",), "abl_error_logits")
probe("hsae.add_hook_fwd_filter", HSAE, _d("""
    model.add_sae(sae)
    filter_sae_acts = lambda name: ("hook_sae_acts_post" in name)
    model.reset_hooks()
    fwd_cache = {}

    def forward_cache_hook(act, hook):
        fwd_cache[hook.name] = act.detach()

    model.add_hook(filter_sae_acts, forward_cache_hook, "fwd")
    model(tokens)
    model.reset_hooks()
"""), _HS + ("hsae.saes",), "sorted(fwd_cache)", compare="exact")
probe("hsae.add_hook_bwd", HSAE, _d("""
    torch.set_grad_enabled(True)
    filter_sae_acts = lambda name: ("hook_sae_acts_post" in name)
    grad_cache = {}

    def backward_cache_hook(act, hook):
        grad_cache[hook.name] = act.detach()

    model.add_hook(filter_sae_acts, backward_cache_hook, "bwd")
"""), _HS + ("hsae.saes",))
probe("hsae.attribution_backward", HSAE, _d("""
    def logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=False):
        final_logits = logits[:, -1, :]
        answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
        answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
        if per_prompt:
            return answer_logit_diff
        else:
            return answer_logit_diff.mean()
    from transformer_lens import ActivationCache
    torch.set_grad_enabled(True)
    filter_sae_acts = lambda name: ("hook_sae_acts_post" in name)


    def get_cache_fwd_and_bwd(model, tokens, metric):
        model.reset_hooks()
        cache = {}

        def forward_cache_hook(act, hook):
            cache[hook.name] = act.detach()

        model.add_hook(filter_sae_acts, forward_cache_hook, "fwd")

        grad_cache = {}

        def backward_cache_hook(act, hook):
            grad_cache[hook.name] = act.detach()

        model.add_hook(filter_sae_acts, backward_cache_hook, "bwd")

        value = metric(model(tokens))
        print(value)
        value.backward()
        model.reset_hooks()
        return (
            value.item(),
            ActivationCache(cache, model),
            ActivationCache(grad_cache, model),
        )


    BASELINE = original_per_prompt_logit_diff


    def ioi_metric(logits, answer_tokens=answer_tokens):
        return (
            logits_to_ave_logit_diff(logits, answer_tokens, per_prompt=True) - BASELINE
        ).sum()


    model.add_sae(sae)
    clean_tokens = tokens.clone()
    clean_value, clean_cache, clean_grad_cache = get_cache_fwd_and_bwd(
        model, clean_tokens, ioi_metric
    )
"""), _HS + ("hsae.saes",), "clean_value")
probe("hsae.activation_cache_constructor", HSAE, _d("""
    from transformer_lens import ActivationCache
    model.add_sae(sae)
    _, full = model.run_with_cache(tokens)
    cache = {k: full[k] for k in full.keys() if "hook_sae_acts_post" in k}
    clean_cache = ActivationCache(cache, model)
    print("Clean Activations Cached:", len(clean_cache))
"""), _HS + ("hsae.saes",), "(len(clean_cache), clean_cache[utils.get_act_name('z', layer) + '.hook_sae_acts_post'])")
