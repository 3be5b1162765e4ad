"""Ctrl-C during a long pass ends it between blocks, not when the pass is
done (78 s for SmolLM2 at 4 x 2048 tokens), and leaves the model and its KV
cache as they were. Run in a fresh interpreter: the test sends it SIGINT."""
from fresh_process import run_python

INTERRUPTED_PASS = """
import _thread
import signal
import sys
import threading
import time

import numpy as np

from numpy_models import rotary_model
from tinymech.hooks import build_plan

# A shell without job control starts background jobs with SIGINT ignored, and Python then leaves it
# ignored: interrupt_main() did nothing when the suite ran in such a job. Ctrl-C's handler, as a terminal has it:
signal.signal(signal.SIGINT, signal.default_int_handler)

n_layers = 64
model = rotary_model(n_ctx=512, n_layers=n_layers, d_model=256, n_heads=8, d_vocab=64, shared_layers=True)
tokens = np.random.default_rng(0).integers(0, 64, (2, 512))
reference = model(tokens[:, :6])
core = model._core
cache = core.new_cache(2)
core.forward(cache, np.ascontiguousarray(tokens[:, :4], np.int32), None, "none")

first_block = threading.Event()
def ctrl_c():  # SIGINT, as Ctrl-C gives it, once block 0's hook has returned to the pass
    first_block.wait()
    while sys._current_frames()[threading.main_thread().ident].f_code.co_name != "<module>":
        time.sleep(0.001)
    _thread.interrupt_main()
threading.Thread(target=ctrl_c, daemon=True).start()

# captures (no Python code runs during the pass after block 0) count the blocks that ran
plan = build_plan(model, [("blocks.0.hook_resid_pre", lambda act, hook: first_block.set())],
                  capture=[f"blocks.{l}.hook_resid_post" for l in range(n_layers)])
try:
    core.forward(cache, np.ascontiguousarray(tokens[:, 4:], np.int32), plan, "none")
    print("finished")
except KeyboardInterrupt:
    print("interrupted")
print(len(plan.take_captured()) < n_layers, cache.n_past)
# the model and the cache still work: the cache continues from its 4 positions
np.testing.assert_array_equal(model(tokens[:, :6]), reference)
after = core.forward(cache, np.ascontiguousarray(tokens[:, 4:6], np.int32), None, "all")
np.testing.assert_allclose(after, reference[:, 4:], atol=1e-4)
print("usable")
"""


def test_ctrl_c_ends_a_long_pass_between_blocks():
    out = run_python(INTERRUPTED_PASS, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["interrupted", "True", "4", "usable"], out.stdout
