"""Cost accounting: model architecture, FLOPs per generation, API dollars, and per (role, cell) tallies.

FLOPs follow Kaplan et al. (2020): a forward pass over the token at position ``t`` costs
``2·N + 2·n_layer·t·d_attn``, where ``N`` counts the non-embedding parameters plus the output layer.
A generation sums this over every prompt and generated token. Dollars come from a price table in
dollars per million input/output tokens. Cache hits are free: they add to the as-if-uncached totals only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.records import Usage

# bump when ModelArch's fields or the GGUF counting change: it keys the on-disk memo
_ARCH_MEMO_KIND = "arch-v1"


@dataclass(frozen=True)
class ModelArch:
    """The architecture numbers that cost accounting needs.

    `n_params` is non-embedding parameters plus the output layer (the FLOPs ``N``); `n_params_total` counts
    every parameter once (a tied embedding/output matrix once); `d_attn` is n_heads × head_dim.
    """

    family: str
    n_params: int
    n_params_total: int
    n_layer: int
    d_model: int
    d_attn: int
    vocab_size: int
    tied_embeddings: bool

    @property
    def billions(self) -> float:
        """Total parameters in billions (a size axis for scaling plots)."""
        return self.n_params_total / 1e9

    @property
    def size_label(self) -> str:
        """Human label such as ``135M`` or ``1.5B``."""
        n = self.n_params_total
        return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "billions": self.billions}


# ---------------------------------------------------------------------------- GGUF


def _same_weights(a: Any, b: Any, rows: int = 32) -> bool:
    """Whether two GGUF tensors hold (up to quantisation) the same matrix: correlation of a few dequantised rows."""
    import numpy as np
    from gguf.quants import dequantize

    try:
        x = np.asarray(dequantize(a.data[:rows], a.tensor_type), dtype=np.float64).ravel()
        y = np.asarray(dequantize(b.data[:rows], b.tensor_type), dtype=np.float64).ravel()
    except Exception:  # unsupported quant type: assume distinct
        return False
    if x.shape != y.shape or x.std() == 0 or y.std() == 0:
        return False
    return bool(np.corrcoef(x, y)[0, 1] > 0.98)


def _gguf_arch_dict(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def get(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = get("general.architecture")
    if arch is None:
        raise ValueError(f"{path}: no general.architecture in GGUF metadata")
    n_layer = int(get(f"{arch}.block_count"))
    d_model = int(get(f"{arch}.embedding_length"))
    n_heads = int(get(f"{arch}.attention.head_count"))
    key_len = get(f"{arch}.attention.key_length")
    head_dim = int(key_len) if key_len is not None else d_model // n_heads

    tensors = {t.name: t for t in reader.tensors}
    embd = tensors.get("token_embd.weight")
    out = tensors.get("output.weight")
    if embd is None:
        raise ValueError(f"{path}: no token_embd.weight tensor")
    n_embd = int(embd.n_elements)
    body = sum(int(t.n_elements) for name, t in tensors.items() if name not in ("token_embd.weight", "output.weight"))
    if out is None:
        tied, n_out = True, n_embd
    else:
        n_out = int(out.n_elements)
        # converters often write a tied matrix twice (e.g. Qwen2.5-0.5B); count it once if so
        tied = list(out.shape) == list(embd.shape) and _same_weights(embd, out)
    vocab = get(f"{arch}.vocab_size")
    if vocab is None:
        vocab = int(embd.shape[-1]) if len(embd.shape) > 1 else n_embd // d_model
    return asdict(
        ModelArch(
            family=str(arch),
            n_params=body + n_out,
            n_params_total=body + n_out + (0 if tied else n_embd),
            n_layer=n_layer,
            d_model=d_model,
            d_attn=n_heads * head_dim,
            vocab_size=int(vocab),
            tied_embeddings=tied,
        )
    )


def arch_from_gguf(path: str | Path) -> ModelArch:
    """Architecture of a GGUF file from its metadata and tensor shapes (no weights loaded; memoised on disk).

    Parameters are counted from tensor element counts. `token_embd.weight` is excluded from `n_params`;
    `output.weight` is counted as the output layer, or, when absent (tied), the token embedding once.
    An `output.weight` whose values match the embedding (a tied matrix duplicated by the converter) is
    counted once in `n_params_total`.
    """
    from harness.backends.identity import _memo

    p = Path(path)
    return ModelArch(**_memo(_ARCH_MEMO_KIND, p, lambda: _gguf_arch_dict(p)))


# ---------------------------------------------------------------------------- HF config

_FAMILY_ALIASES = {"gemma3_text": "gemma3", "gemma2_text": "gemma2", "qwen3_text": "qwen3"}


def estimate_params_from_hf_config(config: dict[str, Any]) -> int:
    """Total parameter count (tied matrices once) of a llama/mistral/qwen2/qwen3/gemma-style decoder.

    Counted per layer: q/k/v/o projections with grouped-query k/v (biases: qwen2 q/k/v; llama `attention_bias`
    q/k/v/o), gated MLP gate/up/down (+ `mlp_bias`), RMS norms (2 per layer; gemma2/3 4 per layer), q/k norms
    (qwen3, gemma3); plus the final norm, the token embedding and an untied output layer. It is an estimate
    for other families (MoE, vision towers and other extras are not counted).
    """
    c = config.get("text_config") or config
    family = _FAMILY_ALIASES.get(c.get("model_type", ""), c.get("model_type", ""))
    d = int(c["hidden_size"])
    n_layer = int(c["num_hidden_layers"])
    h = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or h)
    hd = int(c.get("head_dim") or d // h)
    ff = int(c["intermediate_size"])
    vocab = int(c["vocab_size"])
    attn_bias = bool(c.get("attention_bias", False))
    qkv_bias = attn_bias or family == "qwen2"
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if qkv_bias:
        attn += h * hd + 2 * kv * hd
    if attn_bias:
        attn += d
    mlp = 3 * d * ff + (2 * ff + d if c.get("mlp_bias", False) else 0)
    norms = (4 if family.startswith("gemma") and family != "gemma" else 2) * d
    if family in ("qwen3", "gemma3"):
        norms += 2 * hd
    embed = vocab * d
    tied = _tied(c, config, family)
    return n_layer * (attn + mlp + norms) + d + embed + (0 if tied else embed)


def _tied(c: dict[str, Any], outer: dict[str, Any], family: str) -> bool:
    for cfg in (c, outer):
        if "tie_word_embeddings" in cfg:
            return bool(cfg["tie_word_embeddings"])
    return family.startswith("gemma")  # transformers' per-family default


def arch_from_hf_config(config: dict[str, Any], n_params_total: int | None = None) -> ModelArch:
    """Architecture from a transformers ``config.json`` dict (``text_config`` nesting handled).

    Without `n_params_total` (e.g. counted from the safetensors), the total is estimated from the config by
    `estimate_params_from_hf_config` (exact for llama/mistral/qwen2/qwen3/gemma3 dense decoders).
    """
    c = config.get("text_config") or config
    family = _FAMILY_ALIASES.get(c.get("model_type", ""), c.get("model_type", "")) or "unknown"
    d = int(c["hidden_size"])
    h = int(c["num_attention_heads"])
    hd = int(c.get("head_dim") or d // h)
    vocab = int(c["vocab_size"])
    tied = _tied(c, config, family)
    total = int(n_params_total) if n_params_total is not None else estimate_params_from_hf_config(config)
    embed = vocab * d
    return ModelArch(
        family=family,
        n_params=total if tied else total - embed,
        n_params_total=total,
        n_layer=int(c["num_hidden_layers"]),
        d_model=d,
        d_attn=h * hd,
        vocab_size=vocab,
        tied_embeddings=tied,
    )


# ---------------------------------------------------------------------------- FLOPs and dollars


def flops_per_generation(arch: ModelArch, prompt_tokens: int, completion_tokens: int) -> float:
    """Σ_{t=1..P+C} (2·N + 2·n_layer·t·d_attn) in closed form: 2·N·L + n_layer·d_attn·L·(L+1), L = P + C."""
    L = int(prompt_tokens) + int(completion_tokens)
    if L <= 0:
        return 0.0
    return float(2 * arch.n_params * L + arch.n_layer * arch.d_attn * L * (L + 1))


class PriceLike(Protocol):
    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class Prices:
    """API prices in dollars per million tokens (`harness.config.Price` works wherever this is accepted)."""

    input_per_million: float
    output_per_million: float


def dollars(prices: PriceLike | None, prompt_tokens: int, completion_tokens: int) -> float:
    """Dollars for one call; no price table means the model costs nothing."""
    if prices is None:
        return 0.0
    return (prompt_tokens * prices.input_per_million + completion_tokens * prices.output_per_million) / 1e6


# ---------------------------------------------------------------------------- tally


@dataclass
class CostTotals:
    """Summed cost of some calls. `flops` is None when any contributing call's architecture was unknown."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    flops: float | None = 0.0
    dollars: float = 0.0

    def add(self, usage: Usage, arch: ModelArch | None, prices: PriceLike | None) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.seconds += usage.seconds
        if arch is None:
            self.flops = None
        elif self.flops is not None:
            self.flops += flops_per_generation(arch, usage.prompt_tokens, usage.completion_tokens)
        self.dollars += dollars(prices, usage.prompt_tokens, usage.completion_tokens)

    def merge(self, other: CostTotals) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.seconds += other.seconds
        self.flops = None if self.flops is None or other.flops is None else self.flops + other.flops
        self.dollars += other.dollars


@dataclass
class CostEntry:
    """One (role, cell): call counts, actual cost (cache hits free) and cost as if nothing were cached."""

    calls: int = 0
    cached_calls: int = 0
    actual: CostTotals = field(default_factory=CostTotals)
    uncached: CostTotals = field(default_factory=CostTotals)

    def merge(self, other: CostEntry) -> None:
        self.calls += other.calls
        self.cached_calls += other.cached_calls
        self.actual.merge(other.actual)
        self.uncached.merge(other.uncached)


@dataclass
class CostTally:
    """Accumulates `Usage` per (role, cell): cached calls add to the uncached totals only."""

    entries: dict[tuple[str, str], CostEntry] = field(default_factory=dict)

    def add(
        self,
        role: str,
        cell: str,
        usage: Usage,
        arch: ModelArch | None = None,
        prices: PriceLike | None = None,
    ) -> None:
        e = self.entries.setdefault((role, cell), CostEntry())
        e.calls += 1
        e.uncached.add(usage, arch, prices)
        if usage.cached:
            e.cached_calls += 1
        else:
            e.actual.add(usage, arch, prices)

    def total(self, role: str | None = None, cell: str | None = None) -> CostEntry:
        """Sum over the entries matching `role` and/or `cell` (None matches all)."""
        out = CostEntry()
        for (r, c), e in self.entries.items():
            if (role is None or r == role) and (cell is None or c == cell):
                out.merge(e)
        return out

    def as_dict(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{cell: {role: {calls, cached_calls, actual: {...}, uncached: {...}}}}``."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (role, cell), e in sorted(self.entries.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            out.setdefault(cell, {})[role] = asdict(e)
        return out


# ---------------------------------------------------------------------------- glue for runs and sweeps


def model_arch(mc: Any, be: Any = None) -> ModelArch | None:
    """The architecture of a role's model from its files, without loading weights; None when unknown.

    GGUF packs and files are read from the GGUF (the converted bf16 copies' configs can mislabel tied
    embeddings); local HF folders from config.json (parameters estimated from it). API models: unknown.
    """
    import json

    from harness.backends import packs

    backend, _, name = mc.model.partition("/")
    try:
        if backend == "gguf":
            path = packs.gguf_path(name) if name in packs.PACKS else Path(name).expanduser()
            return arch_from_gguf(path) if path.is_file() else None
        if backend in ("hf", "vllm"):
            res = getattr(be, "res", None)
            folder = Path(res.folder) if res is not None else Path(name).expanduser()
            cfg = folder / "config.json"
            return arch_from_hf_config(json.loads(cfg.read_text())) if cfg.is_file() else None
    except (OSError, ValueError, KeyError):
        return None
    return None


def model_meta(mc: Any, be: Any = None) -> dict[str, Any] | None:
    """What the results store keeps about a model's size and family (models.meta_json), or None when unknown."""
    arch = model_arch(mc, be)
    return {**arch.to_dict(), "size_label": arch.size_label} if arch is not None else None


def call_cost(cfg: Any, mc: Any, be: Any, usage: Usage) -> dict[str, float | None]:
    """FLOPs and dollars of one call as if it were not cached (the store's `cached` flag gives the actual cost).

    FLOPs are None when the architecture is unknown; dollars are None when the config has no price for the model.
    """
    arch = _ARCH_MEMO.get(mc.model)
    if arch is None and mc.model not in _ARCH_MEMO:
        arch = _ARCH_MEMO[mc.model] = model_arch(mc, be)
    price = cfg.prices.get(mc.model) if getattr(cfg, "prices", None) else None
    return {
        "flops": flops_per_generation(arch, usage.prompt_tokens, usage.completion_tokens) if arch else None,
        "dollars": dollars(price, usage.prompt_tokens, usage.completion_tokens) if price else None,
    }


_ARCH_MEMO: dict[str, ModelArch | None] = {}
