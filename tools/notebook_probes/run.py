"""The notebook-port measurement: every probe of probes.py run on TransformerLens/SAELens and on
tinymech, with only the imports changed.

    python tools/notebook_probes/run.py [--json report.json] [--only main. expl.] [--quiet]

Each probe runs twice, each time in a fresh namespace: its setups and its code as the notebook writes
them, then with the imports rewritten for tinymech (IMPORTS below; nothing else changes). Its result is
compared (numbers with np.allclose at float32 tolerance, after torch -> numpy). A probe ends as:

  same        runs on tinymech as written, with the reference's numbers (or, where nothing is comparable,
              runs)
  differs     runs on tinymech but gives other numbers: a bug
  torch-only  fails only because a torch tensor method or function meets a numpy array tinymech returned
              (with --torch-arrays, rerun with tm.set_array_type("torch") and compared)
  fails       fails otherwise (the exception says what is missing)
  invalid     fails on the reference itself: the probe is broken (should never happen)

Run from the repository's root with PYTHONPATH=. to measure the source tree. Nothing reaches the hub:
standins.py writes an offline Hugging Face cache in which the notebooks' models and SAEs are the bundled
demo model and SAEs for it.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import probes as probe_data  # noqa: E402
import standins  # noqa: E402

# ---------------------------------------------------------------- the import change, the only edit

# a module of the notebooks -> tinymech's (the longest prefix wins; transformer_lens.X -> tinymech.X)
MODULES = {
    "transformer_lens": "tinymech",
    "transformer_lens.hook_points": "tinymech",
    "transformer_lens.head_detector": "tinymech.analysis",
    "sae_lens": "tinymech",
}
# names that tinymech spells otherwise: (module, name) -> tinymech's name (imported under the old one)
NAMES = {("sae_lens", "HookedSAETransformer"): "HookedTransformer"}


def _map_module(name: str) -> str:
    for prefix in sorted(MODULES, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return MODULES[prefix] + name[len(prefix):]
    return name


class _Imports(ast.NodeTransformer):
    def visit_Import(self, node):
        nodes = []
        for alias in node.names:
            new = _map_module(alias.name)
            if new == alias.name:
                nodes.append(ast.Import(names=[alias]))
            elif alias.asname or "." not in alias.name:
                nodes.append(ast.Import(names=[ast.alias(new, alias.asname or alias.name)]))
            else:  # `import transformer_lens.utils` binds transformer_lens
                nodes += [ast.Import(names=[ast.alias(new, None)]),
                          ast.parse(f"{alias.name.split('.')[0]} = {new.split('.')[0]}").body[0]]
        return [ast.copy_location(n, node) for n in nodes]

    def visit_ImportFrom(self, node):
        if not node.module or node.level:
            return node
        new = _map_module(node.module)
        if new == node.module:
            return node
        names = [ast.alias(NAMES.get((node.module, a.name), a.name),
                           a.asname or (a.name if (node.module, a.name) in NAMES else None)) for a in node.names]
        return ast.copy_location(ast.ImportFrom(module=new, names=names, level=0), node)


def tinymech_imports(code: str) -> str:
    """code with its transformer_lens / sae_lens imports rewritten for tinymech, nothing else."""
    tree = _Imports().visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


def substituted(code: str, subs) -> str:
    for old, new in subs:  # whole words: " cat" is not the start of " cat_logits"
        code = re.sub(re.escape(old) + (r"(?!\w)" if old[-1:].isalnum() else ""), lambda _: new, code)
    return code


# ---------------------------------------------------------------- running one side

_MODELS: dict = {}
COPY_MODELS = False  # --copy-models: deep copies instead of one model per library reset between probes


@contextlib.contextmanager
def memoized_loading(classes):
    """While setups run, from_pretrained loads each model once (TransformerLens's load and processing take
    seconds) and hands out that model, which reset_models() puts back in order after each probe, or a deep
    copy of it. A probe's own from_pretrained call is never memoized."""
    saved = {cls: cls.__dict__["from_pretrained"] for cls in classes}

    def wrap(func):
        def from_pretrained(klass, *args, **kwargs):
            key = (klass, args, tuple(sorted(kwargs.items())))
            if key not in _MODELS:
                _MODELS[key] = func(klass, *args, **kwargs)
            return copy.deepcopy(_MODELS[key]) if COPY_MODELS else _MODELS[key]
        return classmethod(from_pretrained)

    for cls, method in saved.items():
        setattr(cls, "from_pretrained", wrap(method.__func__))
    try:
        yield
    finally:
        for cls, method in saved.items():
            setattr(cls, "from_pretrained", method)


def reset_models() -> None:
    """What a probe may have changed in a shared model: hooks, attached SAEs, the hook-point switches."""
    for model in _MODELS.values():
        model.reset_hooks(including_permanent=True)
        if hasattr(model, "reset_saes"):
            model.reset_saes()
        for setter in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_attn_in", "set_use_hook_mlp_in"):
            if hasattr(model, setter):
                getattr(model, setter)(False)


class Side:
    """One library: how its code reads, and what to do around a run."""

    def __init__(self, name: str, hook_z_saes: dict):
        self.name = name
        self.hook_z_saes = hook_z_saes
        if name == "reference":
            import transformer_lens
            self.loaders = [transformer_lens.HookedTransformer]
        else:
            import tinymech
            self.loaders = [tinymech.Model]
        self.array_type = None  # tinymech: "torch" for the torch-only rerun

    def code(self, text: str) -> str:
        return text if self.name == "reference" else tinymech_imports(text)

    def run(self, probe) -> dict:
        """{"ok", "stage", "error", "value", "stdout"} of the probe's setups and code in a fresh namespace."""
        import torch

        ns = {"__name__": "__probe__", "HOOK_Z_SAES": self.hook_z_saes}
        subs = probe_data.STANDIN_SUBS + tuple(probe.subs)
        out = io.StringIO()
        stage = "setup"
        torch.set_grad_enabled(False)
        if self.array_type:
            import tinymech
            previous = tinymech.get_array_type() if hasattr(tinymech, "get_array_type") else "numpy"
            tinymech.set_array_type(self.array_type)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for name in probe.setup:
                    stage = f"setup {name}"
                    with memoized_loading(self.loaders):
                        exec(compile(self.code(substituted(probe_data.SETUPS[name], subs)),
                                     f"<setup {name}>", "exec"), ns)
                stage = "code"
                exec(compile(self.code(substituted(probe.code, subs)), f"<probe {probe.id}>", "exec"), ns)
                stage = "result"
                value = eval(probe.result, ns) if probe.result else None
            return {"ok": True, "stage": None, "error": None, "value": value, "stdout": out.getvalue()}
        except BaseException as e:  # noqa: BLE001 (a probe may raise anything, assert included)
            if isinstance(e, KeyboardInterrupt):
                raise
            return {"ok": False, "stage": stage, "error": f"{type(e).__name__}: {e}".strip(),
                    "trace": traceback.format_exc(limit=-3), "value": None,
                    "stdout": out.getvalue()}
        finally:
            torch.set_grad_enabled(False)
            reset_models()
            if self.array_type:
                tinymech.set_array_type(previous)


# ---------------------------------------------------------------- comparing

def plain(x):
    """torch -> numpy, FactoredMatrix -> its product, containers element by element."""
    import numpy as np
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (torch.Size,)):
        return tuple(x)
    if isinstance(x, torch.device):
        return str(x)
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if hasattr(x, "A") and hasattr(x, "B") and hasattr(x, "mdim"):  # a FactoredMatrix of either library
        return plain(x.A)[..., :64, :] @ plain(x.B)[..., :, :64]  # its product's corner (W_E @ OV @ W_U is huge)
    if isinstance(x, (list, tuple)):
        return [plain(e) for e in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x


def differences(ref, got, mode: str, path: str = "result") -> tuple[list[str], float]:
    """(what differs, the largest relative numeric error) between two plain() values."""
    import numpy as np

    if isinstance(ref, (list, tuple)) and not _numeric_list(ref):
        if not isinstance(got, (list, tuple)):
            return [f"{path}: {_brief(got)} where the reference has {_brief(ref)}"], 0.0
        if len(got) != len(ref):
            extra = Counter(map(repr, got)) - Counter(map(repr, ref))
            missing = Counter(map(repr, ref)) - Counter(map(repr, got))
            return [f"{path}: {len(got)} items where the reference has {len(ref)}; extra {sorted(extra)[:8]}, "
                    f"missing {sorted(missing)[:8]}"], 0.0
        problems, worst = [], 0.0
        for i, (r, g) in enumerate(zip(ref, got)):
            p, w = differences(r, g, mode, f"{path}[{i}]")
            problems += p
            worst = max(worst, w)
        return problems, worst
    if isinstance(ref, dict):
        if not isinstance(got, dict) or set(got) != set(ref):
            return [f"{path}: keys {sorted(map(str, got)) if isinstance(got, dict) else _brief(got)} "
                    f"where the reference has {sorted(map(str, ref))}"], 0.0
        problems, worst = [], 0.0
        for k in ref:
            p, w = differences(ref[k], got[k], mode, f"{path}[{k!r}]")
            problems += p
            worst = max(worst, w)
        return problems, worst
    if isinstance(ref, str) or ref is None or isinstance(ref, bool):
        return ([] if got == ref else [f"{path}: {got!r} where the reference has {ref!r}"]), 0.0
    try:
        r = np.asarray(ref)
        g = np.asarray(got)
    except Exception:  # noqa: BLE001
        return ([] if got == ref else [f"{path}: {got!r} != {ref!r}"]), 0.0
    if r.dtype == object or g.dtype == object:
        return ([] if repr(got) == repr(ref) else [f"{path}: {_brief(got)} where the reference has {_brief(ref)}"]), 0.0
    if mode == "eig":  # eigenvalues come in any order: compare each row's sum and sum of magnitudes
        r = np.stack([r.sum(-1), np.abs(r).sum(-1)], -1)
        g = np.stack([g.sum(-1), np.abs(g).sum(-1)], -1) if g.shape == np.asarray(ref).shape else g
    if r.shape != g.shape:
        return [f"{path}: shape {g.shape} where the reference has {r.shape}"], 0.0
    if mode == "topk" and r.ndim > 1:  # a TopK SAE picks either of two near-equal features: allow 1 row in 1000
        rows_r, rows_g = r.reshape(-1, r.shape[-1]), g.reshape(-1, g.shape[-1])
        errs = [differences(a, b, "allclose", path)[0] for a, b in zip(rows_r, rows_g)]
        bad = sum(bool(e) for e in errs)
        if bad > max(1, len(rows_r) // 1000):
            return [f"{path}: {bad} of {len(rows_r)} rows differ; first: {next(e for e in errs if e)[0]}"], 0.0
        keep = np.array([not e for e in errs])
        r, g = rows_r[keep], rows_g[keep]
    if mode == "exact" or r.dtype.kind in "biu" and g.dtype.kind in "biu":
        ok = np.array_equal(r, g)
        return ([] if ok else [f"{path}: values differ ({int((r != g).sum())} of {r.size})"]), 0.0
    if r.dtype.kind in "biu" and g.dtype.kind == "b" or r.dtype.kind == "b":
        return ([] if np.array_equal(r, g) else [f"{path}: values differ"]), 0.0
    r = r.astype(np.complex128 if np.iscomplexobj(r) or np.iscomplexobj(g) else np.float64)
    g = g.astype(r.dtype)
    if not np.array_equal(np.isfinite(r), np.isfinite(g)):
        return [f"{path}: infinities or NaNs differ"], float("inf")
    finite = np.isfinite(r)
    scale = max(float(np.abs(r[finite]).max(initial=0.0)), 1.0)
    err = float(np.abs(r[finite] - g[finite]).max(initial=0.0)) / scale
    return ([] if err <= TOLERANCE else [f"{path}: max error {err:.2e} of scale {scale:.3g}"]), err


TOLERANCE = 1e-4  # relative to the reference's largest magnitude (at least 1): float32 rounding of a forward pass


def _numeric_list(x) -> bool:
    return bool(x) and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in x)


def _brief(x) -> str:
    text = repr(x)
    return text if len(text) < 80 else text[:77] + "..."


# a failure that only comes from torch meeting a numpy array that tinymech returned
_TORCH_ONLY = [
    re.compile(r"'numpy\.\w+' object has no attribute '(?P<attr>\w+)'"),
    re.compile(r"must be Tensor, not numpy"),
    re.compile(r"expected Tensor as element \d+ in argument \d+, but got numpy"),
    re.compile(r"got an unexpected keyword argument '(?P<kw>dim|keepdim|descending|dim1|dim2)'"),
    re.compile(r"'(?P<kw>dim|keepdim|descending|dim1|dim2)' is an invalid keyword argument"),
    re.compile(r"can't assign a numpy\.\w+ to a torch"),
    re.compile(r"unsupported operand type\(s\) for .*'Tensor' and 'numpy"),
]


def torch_only(error: str) -> bool:
    import torch

    for pattern in _TORCH_ONLY:
        m = pattern.search(error)
        if m and (not m.groupdict().get("attr") or hasattr(torch.Tensor, m.group("attr"))):
            return True
    return False


def classify(probe, ref: dict, got: dict) -> dict:
    row = {"id": probe.id, "notebook": probe.notebook, "code": probe.code, "setup": list(probe.setup),
           "subs": [list(s) for s in probe.subs], "note": probe.note, "result": probe.result}
    if not ref["ok"]:
        return dict(row, status="invalid", error=f"reference, {ref['stage']}: {ref['error']}",
                    trace=ref.get("trace"))
    if not got["ok"]:
        status = "torch-only" if got["stage"] != "setup" and torch_only(got["error"]) else "fails"
        return dict(row, status=status, error=f"{got['stage']}: {got['error']}", trace=got.get("trace"))
    if probe.result is None or not probe.numeric:
        return dict(row, status="same", error=None)
    problems, err = differences(plain(ref["value"]), plain(got["value"]), probe.compare)
    if problems:
        return dict(row, status="differs", error="; ".join(problems[:5]), max_err=err)
    return dict(row, status="same", error=None, max_err=err)


# ---------------------------------------------------------------- the measurement

STATUSES = ("same", "differs", "torch-only", "fails", "invalid")


def measure(selected, cache_root: Path, progress=None, check_all: bool = False, torch_arrays: bool = False) -> dict:
    hook_z = standins.hook_z_saes(cache_root)
    reference = Side("reference", {k: str(v) for k, v in hook_z.items()})
    tiny = Side("tinymech", {k: str(v) for k, v in hook_z.items()})
    import tinymech

    rows = []
    for probe in selected:
        start = time.perf_counter()
        got = tiny.run(probe)
        # the reference is needed to compare numbers; where tinymech fails it only shows that the probe is
        # sound (--check-all), and the patching sweeps take TransformerLens minutes
        rerun = torch_arrays and hasattr(tinymech, "set_array_type")
        ran = got["ok"] or torch_only(got.get("error") or "") and rerun
        ref = reference.run(probe) if ran or check_all else {"ok": True, "unchecked": True}
        row = classify(probe, ref, got)
        row["reference_checked"] = not ref.get("unchecked", False)
        if row["status"] == "torch-only" and rerun:
            tiny.array_type = "torch"
            try:
                again = classify(probe, ref, tiny.run(probe))
            finally:
                tiny.array_type = None
            row["with_torch_arrays"] = {"status": again["status"], "error": again["error"]}
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
        if progress:
            progress(row)
    return {"probes": rows, "summary": summary(rows)}


def summary(rows) -> dict:
    def counts(rs):
        c = Counter(r["status"] for r in rs)
        total = len(rs)
        as_is = c["same"]
        return {"total": total, **{s: c[s] for s in STATUSES},
                "share_as_is": round(as_is / total, 4) if total else 0.0,
                # the goal's measure: torch tensor methods on returned numpy arrays aside
                "share_torch_aside": round(as_is / (total - c["torch-only"]), 4) if total > c["torch-only"] else 0.0}

    by_notebook = {nb: counts([r for r in rows if r["notebook"] == nb]) for nb in probe_data.NOTEBOOKS
                   if any(r["notebook"] == nb for r in rows)}
    return {"overall": counts(rows), "by_notebook": by_notebook}


def table(report: dict) -> str:
    lines = [f"{'notebook':34} {'probes':>6} {'same':>5} {'differs':>7} {'torch-only':>10} {'fails':>5} "
             f"{'invalid':>7} {'as-is':>6} {'torch aside':>11}"]
    items = list(report["summary"]["by_notebook"].items()) + [("overall", report["summary"]["overall"])]
    for name, c in items:
        if name == "overall":
            lines.append("-" * len(lines[0]))
        lines.append(f"{name:34} {c['total']:6} {c['same']:5} {c['differs']:7} {c['torch-only']:10} {c['fails']:5} "
                     f"{c['invalid']:7} {c['share_as_is']:6.1%} {c['share_torch_aside']:11.1%}")
    return "\n".join(lines)


def failures(report: dict) -> str:
    """Every probe that does not run as written, grouped by status and error (what tinymech lacks)."""
    groups: dict = {}
    for row in report["probes"]:
        if row["status"] != "same":
            error = re.sub(r"\(/[^)]*\)", "", (row.get("error") or "").splitlines()[0])[:160]
            groups.setdefault((row["status"], error), []).append(row["id"])
    lines = []
    for (status, error), ids in sorted(groups.items(), key=lambda kv: (STATUSES.index(kv[0][0]), -len(kv[1]))):
        lines.append(f"{status:10} {len(ids):3}  {error}\n{'':15}{', '.join(ids)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--only", nargs="*", default=(), help="probe ids or id prefixes")
    parser.add_argument("--cache", type=Path, help="where to build the offline stand-in cache (default: a temp dir)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--torch-arrays", action="store_true",
                        help="rerun the torch-only probes with tm.set_array_type('torch') and compare them with the "
                             "reference (its patching sweeps take TransformerLens about 10 minutes)")
    parser.add_argument("--check-all", action="store_true",
                        help="also run the reference where tinymech fails (shows every probe is sound; slow)")
    parser.add_argument("--copy-models", action="store_true",
                        help="give each probe a deep copy of the loaded models (slower) instead of resetting them")
    args = parser.parse_args(argv)

    global COPY_MODELS
    COPY_MODELS = args.copy_models
    root = args.cache or Path(tempfile.mkdtemp(prefix="tinymech-notebook-probes-"))
    os.environ.update(standins.offline_env(root / "hub"))  # before huggingface_hub is imported
    logging.disable(logging.WARNING)
    standins.build(root)

    selected = [p for p in probe_data.PROBES
                if not args.only or any(p.id == o or p.id.startswith(o) for o in args.only)]

    def progress(row):
        if not args.quiet:
            print(f"{row['status']:10} {row['id']:42} {row['seconds']:6.2f}s  {row.get('error') or ''}"[:220],
                  flush=True)

    report = measure(selected, root, progress, args.check_all, args.torch_arrays)
    report["imports"] = {"modules": MODULES, "names": {f"{m}.{n}": v for (m, n), v in NAMES.items()}}
    report["standin_subs"] = [list(s) for s in probe_data.STANDIN_SUBS]
    if not args.quiet:
        print(failures(report))
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
