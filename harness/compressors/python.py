"""`python/<module>:<function>`: a user's own compressor (a rule-based filter, LLMLingua, an extractor...).

Config:

    models:
      compressor:
        model: python/mypkg.filters:keep_sentences
        options: {max_sentences: 3}     # keyword arguments of the function
        tokenizer: gguf/smollm2-135m    # counts tokens (default: the scorer's, else the predictor's tokenizer)

The target is either a function `(question, context, **options) -> str`, or a class built once with `**options`
whose instances have `compress(question, context) -> str` (or are callable that way). The module is imported as
Python would (`PYTHONPATH`, installed packages, and the current folder). A missing module, a missing function or
options the function does not take stop the run before anything is written, with one line naming the field.

Such a compressor is sampling-free: it makes the same text for every seed. The harness calls it once per context
(one compression, j = 0, read by the predictor and by the MI stage: M is 1 for it) and reports for MI:

- `bits`: the proxy scorer's estimate, mean_i log2 q(z_i|x_i) / ((1/N) Σ_l q(z_i|x_l)). For any scorer q this is a
  lower bound (Barber-Agakov) on the drawn-set MI I(X;Z|Q), which for a deterministic map Z = f(X, Q) equals the
  entropy H(Z|Q) of its outputs over the drawn contexts;
- `deterministic_bits`: that drawn-set value itself, computed exactly from the texts (the plug-in entropy of the
  distinct compressions in each group, `harness.mi.plugin_entropy_bits`), at most log2 N: N distinct outputs
  saturate it, and the population value is then "at least this much";
- no Monte Carlo error (nothing is sampled given the contexts): the MC column reads n/a, not ±0.

The identity (a model row in the store, part of every compression key) is the spec, a hash of the module's source,
the options and the tokenizer that counts: editing the function or its options makes new compressions, never stale
reuse.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from harness.compressors.base import CompressInput, text_compression
from harness.errors import UserError
from harness.records import Generation, GenParams, ModelIdentity, Sample


def _import(module: str, field: str, spec: str) -> Any:
    """Import `module` as Python would, with the current folder on the path (as `python -m` has it)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise UserError(f"{field}: no Python module '{e.name}' for '{spec}'; install it, add its folder to "
                            "PYTHONPATH, or run from the folder that holds it") from None
        raise UserError(f"{field}: importing '{module}' for '{spec}' failed: {e}") from None
    except Exception as e:
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise UserError(f"{field}: importing '{module}' for '{spec}' failed: {msg}") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def resolve(spec: str, options: dict[str, Any], field: str = "models.compressor.model") -> Callable[[str, str], Any]:
    """The callable `(question, context) -> str` that `python/<module>:<attr>` names, with its options bound.

    Every mistake is a `UserError` naming `field` (or the options field next to it).
    """
    name = spec.partition("/")[2]
    module, _, attr = name.partition(":")
    mod = _import(module, field, spec)
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"{field}: module '{module}' has no '{attr}' (from '{spec}'); check the name after ':'")
        obj = getattr(obj, part)
    opt_field = field.rsplit(".", 1)[0] + ".options"
    if inspect.isclass(obj):
        try:
            inst = obj(**options)
        except TypeError as e:
            raise UserError(f"{opt_field}: {attr}(**options) failed: {e}") from None
        fn = getattr(inst, "compress", inst)
        if not callable(fn):
            raise UserError(f"{field}: class '{attr}' has no compress(question, context) method")
        _check_signature(fn, {}, opt_field, attr)
        return fn
    if not callable(obj):
        raise UserError(f"{field}: '{attr}' in '{module}' is not a function; name a function or a class")
    _check_signature(obj, options, opt_field, attr)

    def call(question: str, context: str) -> Any:
        return obj(question, context, **options)

    return call


def _check_signature(fn: Any, options: dict[str, Any], field: str, attr: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin without a signature: found out on the first call
    try:
        sig.bind("question", "context", **options)
    except TypeError as e:
        raise UserError(f"{field}: {attr}(question, context, **options) does not fit its signature {sig}: "
                        f"{e}") from None


def _source_hash(spec: str, options: dict[str, Any], tokenizer: str = "") -> str:
    module = spec.partition("/")[2].partition(":")[0]
    mod = sys.modules.get(module)
    try:
        src = inspect.getsource(mod) if mod is not None else ""
    except (OSError, TypeError):
        src = ""
    h = hashlib.sha256(src.encode())
    h.update(json.dumps([options, tokenizer], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class PythonCompressor:
    """A `python/<module>:<function>` compressor; see the module docstring."""

    deterministic = True

    def __init__(self, spec: str, options: dict[str, Any] | None = None, *, tokenizer: Any = None,
                 field: str = "models.compressor.model"):
        self.spec = spec
        self.options = dict(options or {})
        self.fn = resolve(spec, self.options, field)
        self.tokenizer = tokenizer  # a backend whose count_tokens counts (only its tokenizer loads)
        tok = tokenizer.identity().key() if tokenizer is not None else ""  # it counts the stored n_tokens
        self._identity = ModelIdentity("python", spec.partition("/")[2], _source_hash(spec, self.options, tok), "", "")

    def identity(self) -> ModelIdentity:
        return self._identity

    def count_tokens(self, text: str) -> int | None:
        return self.tokenizer.count_tokens(text) if self.tokenizer is not None else None

    def prepare(self, sample: Sample, overflow: str) -> tuple[CompressInput | None, str | None]:
        return CompressInput(sample, sample.context), None  # a function has no window to fit

    def compress(self, jobs: list[tuple[CompressInput, GenParams]]) -> list[Generation]:
        return [self._one(inp) for inp, _ in jobs]

    def _one(self, inp: CompressInput) -> Generation:
        return text_compression(self.spec, lambda: self.fn(inp.sample.question, inp.context), inp.context,
                                self.count_tokens)

    @property
    def scorer(self) -> Any:
        return None

    def close(self) -> None:
        if self.tokenizer is not None:
            self.tokenizer.close()
