"""Several Python threads on one model or one KV cache, and hooks that call
back into the model: the core serializes what must take turns, refuses what
would wait for itself or deadlock, and never corrupts memory."""
import gc
import sys
import threading

import numpy as np
import pytest

import tinymech as tm
from fresh_process import run_python


@pytest.fixture(scope="module")
def model():
    return tm.load()


def run_threads(target, args_list):
    threads = [threading.Thread(target=target, args=args) for args in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_threads_sharing_a_kv_cache_take_turns(model):
    tokens = np.random.default_rng(0).integers(0, model.cfg.d_vocab, (4, 20))
    for _ in range(10):
        cache = model.new_cache(4)
        done, errors = [], []

        def extend():
            for _ in range(14):  # 2 x 14 x 20 positions: more than the context of 256
                try:
                    model.forward(tokens, cache=cache, logits="none")
                    done.append(1)
                except tm.ContextLengthError as e:
                    errors.append(e)

        run_threads(extend, [(), ()])
        # every call that ran appended its 20 positions; the others were refused whole
        assert cache.n_past == 20 * len(done) <= model.cfg.n_ctx
        assert len(done) == model.cfg.n_ctx // 20 and len(errors) == 28 - len(done)
    # the cache's content is what one thread alone would have written
    alone = model.new_cache(4)
    for _ in range(len(done)):
        model.forward(tokens, cache=alone, logits="none")
    probe = tokens[:, :1]
    np.testing.assert_array_equal(model.forward(probe, cache=cache.fork()), model.forward(probe, cache=alone.fork()))


def test_a_cache_changed_by_another_thread_during_passes(model):
    """truncate / fork / reset from one thread while another decodes: each
    call waits for the pass on the cache to end, and the cache stays whole."""
    tokens = np.random.default_rng(2).integers(0, model.cfg.d_vocab, (2, 8))
    cache = model.new_cache(2)
    stop = threading.Event()

    def decode():
        while not stop.is_set():
            try:
                model.forward(tokens, cache=cache, logits="last")
            except tm.ContextLengthError:
                cache.reset()

    def meddle():
        try:
            for i in range(300):
                if i % 3 == 0:
                    try:
                        cache.truncate(cache.n_past // 2)
                    except IndexError:  # the decoder reset it between the two calls
                        pass
                elif i % 3 == 1:
                    cache.fork()
                else:
                    cache.reserve(64)
        finally:
            stop.set()

    run_threads(lambda f: f(), [(decode,), (meddle,)])
    assert 0 <= cache.n_past <= model.cfg.n_ctx
    cache.truncate(min(cache.n_past, 8))  # still a working cache
    assert model.forward(tokens[:, :1], cache=cache).shape == (2, 1, model.cfg.d_vocab)


def test_a_kv_cache_belongs_to_the_model_that_made_it(model):
    other = tm.load()  # the same shapes, but another model
    cache = model.new_cache(1)
    tokens = model.to_tokens("Mr Darcy")
    for c in (cache, cache.fork()):
        with pytest.raises(tm.InvalidInputError, match="made for another model"):
            other.forward(tokens, cache=c)
    with pytest.raises(tm.InvalidInputError, match="tokens have batch 2 but the cache holds 1"):
        model.forward(np.concatenate([tokens, tokens]), cache=cache)
    assert cache.n_past == 0


def test_a_kv_cache_outlives_its_model():
    """The next model is usually allocated where a freed one was: its address
    does not tell them apart, and the old cache's keys must not continue under new weights."""
    tokens = np.array([[1, 2, 3]])
    for _ in range(5):
        first = tm.load()
        cache = first.new_cache(1)
        first.forward(tokens, cache=cache)
        del first
        gc.collect()
        second = tm.load()
        with pytest.raises(tm.InvalidInputError, match="made for another model"):
            second.forward(tokens, cache=cache)
        assert cache.n_past == 3


DEADLOCK = """
import threading
import tinymech as tm

a, b = tm.load(), tm.load()
tokens = a.to_tokens("Mr Darcy walked in")
both_inside = threading.Barrier(2, timeout=30)
results = {}

def run(name, model, other):
    def hook(act, hook):
        both_inside.wait()  # both passes hold their models: each hook now asks for the other's
        other(tokens)
    try:
        results[name] = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", hook)])
    except tm.HookError as e:
        results[name] = e

threads = [threading.Thread(target=run, args=("a", a, b)), threading.Thread(target=run, args=("b", b, a))]
for t in threads:
    t.start()
for t in threads:
    t.join()
refused = [str(r) for r in results.values() if isinstance(r, Exception)]
done = [r for r in results.values() if not isinstance(r, Exception)]
print(len(refused), len(done), bool(done) and (done[0] == a(tokens)).all())
print(refused)
"""


def test_hooks_on_two_threads_running_each_others_models_do_not_deadlock():
    """Thread A's pass on model 1 runs model 2 from a hook while thread B's pass
    on model 2 runs model 1: waiting would never end. One of them is refused
    (its pass unwinds and releases its model), the other finishes."""
    out = run_python(DEADLOCK, timeout=120)
    assert out.returncode == 0, out.stderr
    counts, refused = out.stdout.splitlines()[:2]
    assert counts == "1 1 True", out.stdout
    assert "waiting for this model would deadlock" in refused and "hooks on two threads" in refused


OUT_OF_MEMORY = """
import resource
import numpy as np
import tinymech as tm
from tinymech.ops import top_k

tm.set_num_threads(4)
x = np.ones((4, 1 << 23), np.float32)
top_k(x[:, :100], 5)  # the pool's threads have started
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
# room for the 24 MB of results, not for any thread's 64 MB of indices to sort (k * 16 >= n)
resource.setrlimit(resource.RLIMIT_AS, (vm + (40 << 20), resource.RLIM_INFINITY))
try:
    top_k(x, 1 << 19)
except MemoryError:
    print("MemoryError")
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(top_k(x[:, :100] * np.arange(100), 3)[0][0])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_an_allocation_failing_in_pool_threads_raises_memory_error():
    """Every thread's chunk fails to allocate: workers' exceptions used to
    escape and abort the process; now the job drains and one MemoryError
    comes out, and the pool still works."""
    out = run_python(OUT_OF_MEMORY, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["MemoryError", "[99", "98", "97]"], out.stdout


def test_threads_on_one_model_get_their_own_results(model):
    rng = np.random.default_rng(1)
    inputs = [rng.integers(0, model.cfg.d_vocab, (2, 30)) for _ in range(4)]
    expected = [model(x) for x in inputs]
    got = [None] * len(inputs)

    def run(i):
        for _ in range(5):
            got[i] = model(inputs[i])

    run_threads(run, [(i,) for i in range(len(inputs))])
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_a_hook_running_its_own_model_is_refused(model):
    tokens = model.to_tokens("Mr Darcy")
    with pytest.raises(tm.HookError, match="a hook cannot run the model whose pass called it"):
        model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda a, hook: model(tokens) is None or a)])
    with pytest.raises(tm.HookError, match="a hook cannot run the model"):
        model.generate(tokens, max_new_tokens=2, hooks=[("hook_embed", lambda a, hook: model.generate(tokens, 1))])
    cache = model.new_cache(1)
    with pytest.raises(tm.HookError, match="KV cache is already in use by a forward pass on this thread"):
        model.forward(tokens, cache=cache, hooks=[("hook_embed", lambda a, hook: cache.truncate(0))])
    assert cache.n_past == 0  # the failed pass left the cache as it was
    # another model may run inside a hook, and the model still works after
    other = tm.load()
    seen = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda a, hook: other(tokens) is None or a)])
    np.testing.assert_array_equal(seen, model(tokens))


def test_thread_counts_are_bounded():
    before = tm.get_num_threads()
    for n in (tm._core.MAX_THREADS + 1, 10**9, 10**12, 2**63):
        with pytest.raises(tm.InvalidInputError, match="at most 1024 threads"):
            tm.set_num_threads(n)
    assert tm.get_num_threads() == before
