"""How many threads the core starts with: what the process may run on (its
CPU affinity, physical cores), unless TINYMECH_NUM_THREADS or OMP_NUM_THREADS
says otherwise. Each case runs in a fresh interpreter, since the pool is sized
when the core is first used."""
import os
import subprocess
import sys

import pytest

import tinymech

pytestmark = pytest.mark.slow

# the child imports the same tinymech as this process (installed, or the source tree)
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(tinymech.__file__)))


def threads_in_fresh_process(env_overrides: dict, cpus=None) -> int:
    pin = f"os.sched_setaffinity(0, {sorted(cpus)!r}); " if cpus is not None else ""
    code = f"import os; {pin}import tinymech; print(tinymech.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("TINYMECH_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    # (run from there too: `python -c` puts the working directory first on sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=PACKAGE_PARENT)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def physical_cores(cpus) -> int:
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(topo + "physical_package_id") as p, open(topo + "core_id") as c:
                cores.add((int(p.read()), int(c.read())))
        except OSError:
            return len(cpus)
    return len(cores)


def test_default_is_the_physical_cores_this_process_may_use():
    if not hasattr(os, "sched_getaffinity"):  # no affinity mask to read (not Linux): every hardware thread
        assert threads_in_fresh_process({}) == os.cpu_count()
        return
    cpus = sorted(os.sched_getaffinity(0))
    assert threads_in_fresh_process({}) == physical_cores(cpus)
    assert threads_in_fresh_process({}, cpus=cpus[:1]) == 1  # taskset -c 0: one thread, not one per machine CPU


def test_environment_sets_the_count():
    assert threads_in_fresh_process({"TINYMECH_NUM_THREADS": "3"}) == 3
    assert threads_in_fresh_process({"OMP_NUM_THREADS": "2,1"}) == 2
    assert threads_in_fresh_process({"TINYMECH_NUM_THREADS": "5", "OMP_NUM_THREADS": "2"}) == 5


def test_a_bad_environment_value_is_ignored():
    default = threads_in_fresh_process({})
    for bad in ("0", "-1", "two", "", "1e9"):
        assert threads_in_fresh_process({"TINYMECH_NUM_THREADS": bad}) == default, bad


def test_a_count_past_set_num_threads_limit_is_ignored():
    """One limit however the count is given: TINYMECH_NUM_THREADS=4000 used to
    start 4000 threads (one forward: 40 ms -> 34 s), past set_num_threads' 1024."""
    default = threads_in_fresh_process({})
    for name in ("TINYMECH_NUM_THREADS", "OMP_NUM_THREADS"):
        for past in (str(tinymech._core.MAX_THREADS + 1), "4000"):
            assert threads_in_fresh_process({name: past}) == default, (name, past)


def test_set_num_threads_zero_restores_the_default():
    tm = tinymech
    before = tm.get_num_threads()
    try:
        tm.set_num_threads(3)
        assert tm.get_num_threads() == 3
        tm.set_num_threads(0)
        assert tm.get_num_threads() == threads_in_fresh_process(
            {k: v for k, v in os.environ.items() if k in ("TINYMECH_NUM_THREADS", "OMP_NUM_THREADS")})
    finally:
        tm.set_num_threads(before)
