"""One SAE or transcoder shared between threads, models and nested passes:
what a splice holds between its hooks belongs to one pass, so no pass ever
sees another's activations."""
import threading

import numpy as np
import pytest

from numpy_checkpoints import write_sae
from tinymech.sae.sae import SAE, run_with_cache_with_saes

D, D_SAE = 64, 48
# a transcoder reading block 0 and writing block 1; MIDDLE lies between its hooks
HOOK_IN, HOOK_OUT, MIDDLE = "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post", "blocks.0.hook_resid_post"
ROUNDS = 12


@pytest.fixture(scope="module")
def models(saved_gpt2):
    return saved_gpt2("tiny")[0], saved_gpt2("tiny", seed=1)[0]


@pytest.fixture(scope="module", params=["transcoder", "standard"])
def sae(request, tmp_path_factory):
    hooks = dict(hook=HOOK_IN, hook_out=HOOK_OUT) if request.param == "transcoder" else dict(hook=MIDDLE)
    path = tmp_path_factory.mktemp(request.param)
    return SAE.load(write_sae(path, request.param, D, D_SAE, std=0.1, **hooks))


def tokens(seed):
    return np.random.default_rng(seed).integers(1, 257, (2, 10))


def in_lockstep(run, *args_of_thread):
    """run(thread index, args, meet) in two threads, ROUNDS times each; meet() at
    a hook between the splice's input and output waits for the other thread, so
    both passes hold their input at once. Returns each thread's results."""
    barrier = threading.Barrier(len(args_of_thread), timeout=60)
    results = [[] for _ in args_of_thread]
    errors = []

    def meet(act, hook):
        barrier.wait()

    def work(i):
        try:
            for _ in range(ROUNDS):
                results[i].append(run(i, args_of_thread[i], meet))
        except BaseException as e:  # reported below; the other thread's barrier breaks
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args_of_thread))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_a_shared_splice_keeps_each_threads_activations(models, sae):
    spec = sae.as_hook()  # one splice object, in both threads' passes

    def run(i, toks, meet):
        return models[i].run_with_hooks(toks, fwd_hooks=[spec, (MIDDLE, meet)])

    args = [tokens(0), tokens(1)]
    alone = [models[i].run_with_hooks(args[i], fwd_hooks=[sae.as_hook()]) for i in range(2)]
    for i, got in enumerate(in_lockstep(run, *args)):
        for logits in got:
            np.testing.assert_array_equal(logits, alone[i])


def test_a_shared_splice_in_generation(models, sae):
    spec = sae.as_hook()

    def run(i, toks, meet):
        return models[i].generate(toks[:, :4], max_new_tokens=3, stop_at_eos=False, hooks=[spec, (MIDDLE, meet)])

    args = [tokens(2), tokens(3)]
    alone = [models[i].generate(args[i][:, :4], max_new_tokens=3, stop_at_eos=False, hooks=[sae.as_hook()])
             for i in range(2)]
    for i, got in enumerate(in_lockstep(run, *args)):
        for out in got:
            np.testing.assert_array_equal(out, alone[i])


def test_a_shared_sae_caches_each_threads_features(models, sae):
    def run(i, toks, meet):
        return run_with_cache_with_saes(models[i], toks, [sae], names_filter=lambda n: "hook_sae" in n)

    args = [tokens(4), tokens(5)]
    alone = [run(i, args[i], None) for i in range(2)]
    for i, got in enumerate(in_lockstep(run, *args)):
        for logits, cache in got:
            np.testing.assert_array_equal(logits, alone[i][0])
            assert set(cache.keys()) == set(alone[i][1].keys())
            for name in cache.keys():
                np.testing.assert_array_equal(cache[name], alone[i][1][name])


def test_a_pass_inside_a_pass_sharing_the_splice(models, sae):
    """A hook between the splice's input and output runs another model with the
    same splice: the inner pass neither takes nor replaces the outer's input."""
    spec = sae.as_hook()
    outer_toks, inner_toks = tokens(6), tokens(7)
    inner = []

    def nested(act, hook):
        inner.append(models[1].run_with_hooks(inner_toks, fwd_hooks=[spec]))

    got = models[0].run_with_hooks(outer_toks, fwd_hooks=[spec, (MIDDLE, nested)])
    np.testing.assert_array_equal(got, models[0].run_with_hooks(outer_toks, fwd_hooks=[sae.as_hook()]))
    np.testing.assert_array_equal(inner[0], models[1].run_with_hooks(inner_toks, fwd_hooks=[sae.as_hook()]))


def test_set_num_threads_while_another_thread_encodes(tmp_path):
    # regression (review): a TopK screen sized its per-thread state by num_threads() before its parallel_for;
    # set_num_threads from another thread in between let thread indices run past it (a segfault, so the run
    # is a child process)
    import textwrap

    from fresh_process import run_python

    script = textwrap.dedent("""
        import threading, numpy as np, tinymech as tm
        from tinymech.sae.sae import SAE
        from tinymech.sae.loading import SAEConfig
        rng = np.random.default_rng(0)
        d_in, d_sae = 64, 1024
        cfg = SAEConfig(architecture="topk", d_in=d_in, d_sae=d_sae, d_out=d_in, hook_name=None, k=8)
        sae = SAE(cfg, {"W_enc": rng.normal(0, 0.1, (d_in, d_sae)).astype(np.float32),
                        "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_in, np.float32),
                        "W_dec": rng.normal(0, 0.1, (d_sae, d_in)).astype(np.float32)})
        tm._core.set_sae_screen("always")
        x = rng.standard_normal((200, d_in)).astype(np.float32)
        want, stop = sae.encode(x), False
        def resize():
            while not stop:
                for n in (1, 3, 2, 4):
                    tm.set_num_threads(n)
        other = threading.Thread(target=resize)
        other.start()
        try:
            for _ in range(1500):
                assert np.array_equal(sae.encode(x), want)  # the same codes on any number of threads
        finally:
            stop = True
            other.join()
        print("ok")
    """)
    out = run_python(script, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])
