"""transformers backend: hub ids, local folders and GGUF files; CPU or GPU; exact token-id scoring."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends import identity as ident_mod
from harness.backends import packs
from harness.backends.base import STATS
from harness.errors import UserError
from harness.progress import bar_moving
from harness.records import Generation, GenRequest, ModelIdentity, ScoreRequest, ScoreResult, Usage


@dataclass(frozen=True)
class Resolved:
    """Where the weights are: a folder, optionally with a GGUF file name inside it."""

    folder: Path
    gguf_file: str | None
    name: str
    revision: str
    chat_template: str | None
    context_length: int | None


def resolve(backend: str, name: str, dtype: str, revision: str | None, field: str = "model") -> Resolved:
    """Map `gguf/<alias|path>` or `hf/<folder|hub id>` to files, without loading weights."""
    if backend == "gguf":
        if name in packs.PACKS:
            if not packs.is_present(name):
                raise UserError(f"{field}: model pack '{name}' is not fetched; run `harness models fetch {name}`")
            path = packs.gguf_path(name)
            sha = packs.PACKS[name].sha256
            st = packs.safetensors_dir(name)
            meta = ident_mod.gguf_metadata(path)
            if dtype in ("bfloat16", "float32") and (st / "config.json").exists():
                # the bf16 copy holds the same dequantised weights and loads in seconds; read in float32 it
                # is the bf16-rounded weights, so that identity is marked apart from a direct GGUF load
                rev = "sha256:" + sha + ("" if dtype == "bfloat16" else "+bf16copy")
                return Resolved(st, None, name, rev, meta["chat_template"], meta["context_length"])
            return Resolved(
                path.parent, path.name, name, "sha256:" + sha, meta["chat_template"], meta["context_length"]
            )
        path = Path(name).expanduser()
        if not (path.is_file() and path.suffix == ".gguf"):
            raise UserError(
                f"{field}: 'gguf/{name}' is neither a pack alias ({', '.join(packs.PACKS)}) "
                "nor an existing .gguf file; fix the path or run `harness models list`"
            )
        meta = ident_mod.gguf_metadata(path)
        return Resolved(
            path.parent,
            path.name,
            str(path.resolve()),
            "sha256:" + ident_mod.file_sha256(path),
            meta["chat_template"],
            meta["context_length"],
        )
    # hf
    path = Path(name).expanduser()
    if path.is_dir():
        folder = path
        rev = ident_mod.folder_revision(folder)
        disp = str(path.resolve())
    else:
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"{field}: local folder '{name}' does not exist; fix the path")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        try:
            folder = Path(snapshot_download(name, revision=revision, local_files_only=offline))
        except LocalEntryNotFoundError:
            raise UserError(
                f"{field}: hub model '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1; "
                "download it first or use a local folder / gguf pack"
            ) from None
        except Exception as e:
            raise UserError(f"{field}: cannot fetch hub model '{name}': {type(e).__name__}; check the id") from None
        rev = "commit:" + folder.name
        disp = name
    return Resolved(
        folder, None, disp, rev, ident_mod.folder_chat_template(folder), ident_mod.folder_context_length(folder)
    )


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token the chat template puts right after an assistant message (e.g. `<|im_end|>`).

    This is what a chat reply ends on, which is not always `tokenizer.eos_token_id` (a base model's tokenizer
    can name `<|endoftext|>` while its chat template ends turns on `<|im_end|>`). Without a chat template,
    the tokenizer's EOS.
    None when a template puts no special token after the reply.
    """
    if not getattr(tokenizer, "chat_template", None):
        return tokenizer.eos_token_id
    marker = "Zq7Xv"
    msgs = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": marker}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False)
    if marker not in text:
        return None
    after = tokenizer(text[text.rindex(marker) + len(marker) :], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)
    }
    return after[0] if after and after[0] in special else None


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has bf16 matrix instructions (AMX or AVX512-BF16).

    Without them torch's bf16 matmuls are emulated and run tens of times slower than float32
    (measured on an AVX2-only EPYC: 0.8 vs 51 GFLOP/s).
    """
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


DTYPE_ENV = "HARNESS_DTYPE"
DTYPES = ("float32", "bfloat16", "float16")


def forced_dtype() -> str | None:
    """The dtype `HARNESS_DTYPE` forces for every `dtype: auto` model, or None when unset."""
    v = os.environ.get(DTYPE_ENV, "").strip()
    if not v or v == "auto":
        return None
    if v not in DTYPES:
        raise UserError(f"{DTYPE_ENV}={v!r} is not a dtype; set it to one of {', '.join(DTYPES)} (or unset it)")
    return v


def effective_dtype(dtype: str, device: str) -> str:
    """Resolve `auto` to a concrete dtype, so the identity (and the cache key) names what runs.

    `auto` is float32 on a CPU, whatever its bf16 units: bf16 log-probs differ from float32 ones by up to
    0.57 nats per 7–9-token sentence on an AVX-512-BF16 CPU, so a bf16 default would make the default numbers
    depend on the CPU. On a GPU `auto` is bfloat16. `HARNESS_DTYPE` overrides `auto` (to run the same config or
    the test suite through each dtype path); an explicit dtype always wins.
    """
    if dtype != "auto":
        return dtype
    forced = forced_dtype()
    if forced:
        return forced
    if device.startswith("cuda") or (device == "auto" and _cuda_available()):
        return "bfloat16"
    return "float32"


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _torch_dtype(dtype: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}[dtype]


# Every logits processor's neutral value, passed on every generate call (greedy too): transformers 5 fills a None
# field from the model's generation_config (Qwen2.5: repetition_penalty 1.05, top_k 20, top_p 0.8), then from its
# global defaults (top_k 50). Decoding is always greedy (do_sample=False) and `SeededSampler` does the sampling, so
# the sampling-only warpers (top_k, min_p, top_h, ...) are never built; the fields whose neutral value is None
# (bad_words_ids, suppress_tokens, forced_*_token_id, sequence_bias, ...) are kept None by `_bare_generation_config`.
NEUTRAL_GENERATION: dict[str, Any] = {
    "do_sample": False, "num_beams": 1, "temperature": 1.0, "top_p": 1.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "length_penalty": 1.0, "min_length": 0,
    "guidance_scale": 1.0, "renormalize_logits": False, "remove_invalid_values": False,
}
# what a call keeps of the model's own generation_config: special tokens and cache settings, nothing that shapes logits
_GEN_KEEP = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "use_cache",
             "cache_implementation", "cache_config")


@contextlib.contextmanager
def _bare_generation_config(model: Any) -> Iterator[None]:
    """Within the block `model.generation_config` holds only special tokens and cache settings, so nothing else in
    the model's generation_config.json (penalties, bad words, suppressed tokens, assisted decoding) reaches a call."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(
        **{k: getattr(saved, k) for k in _GEN_KEEP if getattr(saved, k, None) is not None}
    )
    try:
        yield
    finally:
        model.generation_config = saved


def draw_tokens(logits: Any, u: Any, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Any:
    """One token per row of `logits` (batch, vocab) from softmax(logits / temperature), by inverse CDF at `u` (batch,).

    Float64 throughout, so a 150k-token CDF is exact to ~1e-13 and a token of probability 0 is never drawn.
    `top_k` > 0 and `top_p` < 1 cut the distribution (as transformers' warpers do) only when a request asks for it.
    """
    import torch

    p = torch.softmax(logits.double() / temperature, -1)
    if 0 < top_k < p.shape[-1]:
        p = torch.where(p >= torch.topk(p, top_k, -1).values[:, -1:], p, 0.0)
    if top_p < 1.0:
        sp, si = torch.sort(p, -1, descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p * sp.sum(-1, keepdim=True)
        p = p.scatter(-1, si, sp.masked_fill(drop, 0.0))
    cdf = p.cumsum(-1)
    total = cdf[:, -1:]
    target = torch.minimum(u.double().reshape(-1, 1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=p.shape[-1] - 1)


class SeededSampler:
    """A logits processor that samples: row r's next token is drawn with its own `torch.Generator(seeds[r])`, and
    every other token is masked to -inf, so greedy decoding (do_sample=False) emits the draw.

    Why not transformers' sampling: `torch.manual_seed` once per batch makes a draw depend on which requests share
    the batch, and its warpers follow the model's generation_config. Here each row takes exactly one uniform per
    step from its own generator, so a request's tokens depend only on its seed and its own logits (rows with
    different seeds batch together), and no warper runs unless the request sets top_k/top_p itself.
    """

    def __init__(self, seeds: list[int], temperature: float, device: Any, top_k: int = 0, top_p: float = 1.0):
        import torch

        self.gens = [torch.Generator(device=torch.device(device)).manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64, device=g.device) for g in self.gens])
        tok = draw_tokens(scores, u.to(scores.device), self.temperature, self.top_k, self.top_p)
        return torch.full_like(scores, float("-inf")).scatter_(1, tok[:, None], 0.0)


MAX_PADDING = 0.15  # share of a scoring forward's tokens that may be padding


class RowsDone:
    """A stopping criterion that never stops: it moves the open progress bar (`harness.progress.item_done`) while a
    batch generates, so a bar moves within a batch: each unfinished row by 1/max_new_tokens of a request per token,
    and a row that emits an end-of-sequence token by the rest of its request; `finish()` completes the rows that
    ran to max_new_tokens. The backend attaches it only while a drawn bar is open (`harness.progress.bar_moving`)."""

    def __init__(self, eos_ids: set[int], rows: int, max_new_tokens: int):
        self.eos = sorted(eos_ids)
        self._eos_t: Any = None  # the eos ids as a tensor on the generating device, built on the first token
        self.share = 1.0 / max(max_new_tokens, 1)
        self.given = [0.0] * rows
        self.done: set[int] = set()

    def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
        import torch

        from harness.progress import item_done

        if self._eos_t is None:
            self._eos_t = torch.tensor(self.eos, device=input_ids.device)
        ended = set(torch.isin(input_ids[:, -1], self._eos_t).nonzero().flatten().tolist())
        move = 0.0
        for r, g in enumerate(self.given):
            if r in self.done:
                continue
            step = 1.0 - g if r in ended else min(self.share, 0.99 - g) if g < 0.99 else 0.0
            self.given[r] += step
            move += step
            if r in ended:
                self.done.add(r)
        item_done(move)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        from harness.progress import item_done

        item_done(sum(1.0 - g for r, g in enumerate(self.given) if r not in self.done))
        self.done = set(range(len(self.given)))
        self.given = [1.0] * len(self.given)


def padded_batches(lengths: list[int], max_rows: int, max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Cut items into batches of at most `max_rows` rows whose padding stays at most `max_padding` of the batch.

    Items are taken in ascending length; a batch of rows r and width w (its longest item) forwards r·w tokens of
    which r·w − Σ lengths are padding. Greedy: a batch grows while the next item keeps it within both limits.
    Returns indices into `lengths`. Items of length 0 (nothing to forward) batch only with each other.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    total = 0
    for i in order:
        w = lengths[i]
        if batches and len(batches[-1]) < max_rows:
            rows = len(batches[-1]) + 1
            if rows * w - (total + w) <= max_padding * rows * w:
                batches[-1].append(i)
                total += w
                continue
        batches.append([i])
        total = w
    return batches


class TransformersBackend:
    """A causal LM through transformers. Loads lazily; `close()` frees it."""

    def __init__(
        self,
        backend: str,
        name: str,
        *,
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 8,
        revision: str | None = None,
        trust_remote_code: bool = False,
        context_window: int | None = None,
        field: str = "model",
    ):
        self.kind = backend
        self.dtype = effective_dtype(dtype, device)
        self.batch_size = batch_size
        self.max_padding = MAX_PADDING  # scoring batches are cut by length to keep padding at most this share
        self.trust_remote_code = trust_remote_code
        self.res = resolve(backend, name, self.dtype, revision, field)
        self._context_window = context_window or self.res.context_length
        self._device_req = device
        self.tokenizer: Any = None
        self.model: Any = None

    # ---- identity and metadata (no weights) ----
    def identity(self) -> ModelIdentity:
        return ModelIdentity(
            self.kind, self.res.name, self.res.revision, self.dtype, ident_mod.template_hash(self.res.chat_template)
        )

    @property
    def context_window(self) -> int | None:
        return self._context_window

    # ---- loading ----
    def _load_tokenizer(self) -> None:
        if self.tokenizer is not None:
            return
        from transformers import AutoTokenizer

        kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.res.gguf_file:
            kw["gguf_file"] = self.res.gguf_file
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.res.folder), **kw)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM

        self._load_tokenizer()
        device = self._device_req
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kw: dict[str, Any] = {"dtype": _torch_dtype(self.dtype), "trust_remote_code": self.trust_remote_code}
        if self.res.gguf_file:
            kw["gguf_file"] = self.res.gguf_file
        t = time.time()
        self.model = AutoModelForCausalLM.from_pretrained(str(self.res.folder), **kw).to(device).eval()
        self.device = device
        self.load_seconds = time.time() - t
        STATS["model_loads"] += 1
        gc_ = self.model.generation_config
        eos = gc_.eos_token_id if gc_.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.eos_ids.add(self.tokenizer.eos_token_id)
        if self.end_of_turn_id is not None:  # a chat reply ends there even when generation_config omits it
            self.eos_ids.add(self.end_of_turn_id)

    @property
    def end_of_turn_id(self) -> int | None:
        """The token this model's chat template ends a reply with (what `append_eos` scores)."""
        if not hasattr(self, "_eot"):
            self._load_tokenizer()
            self._eot = end_of_turn_id(self.tokenizer)
        return self._eot

    def close(self) -> None:
        if self.model is not None:
            self.model = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    # ---- prompts ----
    def _prompt_ids(self, messages: list[dict[str, str]] | None, prompt: str | None) -> list[int]:
        self._load_tokenizer()
        if messages:
            if self.res.chat_template is None and not getattr(self.tokenizer, "chat_template", None):
                raise UserError(
                    f"model '{self.res.name}' has no chat template; use a raw `prompt` request or an instruct model"
                )
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt or "", add_special_tokens=True)["input_ids"]

    def count_prompt_tokens(self, request: GenRequest) -> int | None:
        return len(self._prompt_ids(request.message_dicts() or None, request.prompt))

    def count_tokens(self, text: str) -> int | None:
        self._load_tokenizer()
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate_text(self, text: str, n_tokens: int) -> str:
        self._load_tokenizer()
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max(n_tokens, 0)]
        return self.tokenizer.decode(ids)

    # ---- generate ----
    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        """Greedy (temperature 0) or sampled generation; every logits processor is neutral unless asked for.

        Sampling draws from the full softmax(logits / temperature) with each request's own seed (`SeededSampler`),
        whatever else shares its batch; `logprobs` are those of the full distribution at temperature 1.
        """
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        if not requests:
            return []
        self._load()
        STATS["generate_calls"] += 1
        STATS["generate_requests"] += len(requests)
        prompts = [self._prompt_ids(r.message_dicts() or None, r.prompt) for r in requests]
        out: list[Generation | None] = [None] * len(requests)
        # batch requests whose params differ at most in the seed: each row samples with its own generator
        key = [dataclasses.replace(r.params, seed=0) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (repr(key[i]), len(prompts[i])))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < self.batch_size and key[batches[-1][0]] == key[i]:
                batches[-1].append(i)
            else:
                batches.append([i])
        pad = self.tokenizer.pad_token_id
        for b in batches:
            p = requests[b[0]].params
            width = max(len(prompts[i]) for i in b)
            ids = torch.full((len(b), width), pad, dtype=torch.long)
            att = torch.zeros((len(b), width), dtype=torch.long)
            for r, i in enumerate(b):  # left padding
                n = len(prompts[i])
                ids[r, width - n :] = torch.tensor(prompts[i])
                att[r, width - n :] = 1
            cfg = GenerationConfig(
                **NEUTRAL_GENERATION,
                max_new_tokens=p.max_new_tokens,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=pad,
                return_dict_in_generate=True,
                output_logits=p.logprobs,
            )
            procs = LogitsProcessorList()
            if p.temperature > 0:
                seeds = [requests[i].params.seed for i in b]
                procs.append(SeededSampler(seeds, p.temperature, self.device, top_k=p.top_k, top_p=p.top_p))
            t = time.time()
            rows_done = RowsDone(self.eos_ids, len(b), p.max_new_tokens) if bar_moving() else None
            with torch.inference_mode(), _bare_generation_config(self.model):
                res = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=att.to(self.device), generation_config=cfg,
                    logits_processor=procs,
                    stopping_criteria=StoppingCriteriaList([rows_done] if rows_done is not None else []),
                )
            if rows_done is not None:
                rows_done.finish()
            dt = (time.time() - t) / len(b)
            seqs = res.sequences[:, width:].tolist()
            for r, i in enumerate(b):
                toks: list[int] = []
                finish = "length"
                for tok in seqs[r]:
                    toks.append(tok)
                    if tok in self.eos_ids:
                        finish = "stop"
                        break
                lps = None
                if p.logprobs:
                    lps = [float(torch.log_softmax(res.logits[k][r].float(), -1)[tok]) for k, tok in enumerate(toks)]
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                for s in p.stop:
                    if s and s in text:
                        text = text[: text.index(s)]
                        finish = "stop"
                out[i] = Generation(
                    text=text,
                    token_ids=toks,
                    logprobs=lps,
                    finish_reason=finish,
                    usage=Usage(len(prompts[i]), len(toks), dt),
                )
        return out  # type: ignore[return-value]

    # ---- score ----
    def score(self, requests: list[ScoreRequest]) -> list[ScoreResult]:

        if not requests:
            return []
        self._load()
        STATS["score_calls"] += 1
        STATS["score_requests"] += len(requests)
        items = []
        out: list[ScoreResult | None] = [None] * len(requests)
        eot = self.end_of_turn_id
        for i, r in enumerate(requests):
            pre = self._prompt_ids([{"role": a, "content": c} for a, c in r.messages] or None, r.prefix)
            if r.continuation_ids is not None:
                cont = list(r.continuation_ids)
            else:
                cont = self.tokenizer(r.continuation, add_special_tokens=False)["input_ids"]
                if r.append_eos:
                    if eot is None:
                        out[i] = ScoreResult([], [], Usage(), error="the chat template puts no end-of-turn token "
                                             "after a reply; score without append_eos")
                    else:
                        cont = [*cont, eot]
            if not cont and out[i] is None:
                out[i] = ScoreResult([], [], Usage(), error="empty continuation: there is nothing to score")
            items.append((pre, cont))
        # continuations that share a prefix reuse its KV cache: the prefix is forwarded once
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for i, (pre, _) in enumerate(items):
            if out[i] is None:
                by_prefix.setdefault(tuple(pre), []).append(i)
        singles = []
        for pre_t, idx in by_prefix.items():
            if len(idx) >= 2 and pre_t:
                self._score_shared_prefix(list(pre_t), idx, items, out)
            else:
                singles.extend(idx)
        self._score_independent(singles, items, out)
        return out  # type: ignore[return-value]

    def _cache_kw(self) -> str:
        """The name under which this model's forward takes a KV cache: `cache` (transformers ≥ 5.24), else the
        older `past_key_values` (deprecated in 5.24, removed in 5.40)."""
        if not hasattr(self, "_cache_arg"):
            import inspect

            params = inspect.signature(self.model.forward).parameters
            self._cache_arg = "cache" if "cache" in params else "past_key_values"
        return self._cache_arg

    def _forward(self, ids: Any, att: Any | None = None, **kw: Any) -> Any:
        """One forward pass; counts its tokens (padding included) in `STATS["forwarded_tokens"]`."""
        import torch

        with torch.inference_mode():
            res = self.model(input_ids=ids.to(self.device), attention_mask=None if att is None else att.to(self.device),
                             **kw)
        STATS["forwarded_tokens"] += ids.numel()
        return res

    def _score_shared_prefix(self, pre: list[int], idx: list[int], items: list, out: list) -> None:
        """Forward the prefix once (last logit only), then the continuations in batches cut by length that reuse
        its KV cache. A continuation's last token is scored, never forwarded, so one-token continuations cost no
        forward beyond the prefix's."""
        import copy

        import torch

        ckw = self._cache_kw()
        t = time.time()
        res = self._forward(torch.tensor([pre]), use_cache=True, logits_to_keep=1)
        cache = res[ckw]
        first = torch.log_softmax(res.logits[0, -1].float(), -1)
        t_pre = time.time() - t
        pad = self.tokenizer.pad_token_id
        lengths = [len(items[i][1]) - 1 for i in idx]
        for part in padded_batches(lengths, self.batch_size * 4, self.max_padding):
            b = [idx[k] for k in part]
            width = max(lengths[k] for k in part)
            t = time.time()
            logits = None
            if width > 0:
                ids = torch.full((len(b), width), pad, dtype=torch.long)
                att = torch.zeros((len(b), len(pre) + width), dtype=torch.long)
                att[:, : len(pre)] = 1
                for r, i in enumerate(b):
                    c = items[i][1][:-1]
                    ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
                    att[r, len(pre) : len(pre) + len(c)] = 1
                kv = copy.deepcopy(cache)
                kv.batch_repeat_interleave(len(b))
                logits = self._forward(ids, att, **{ckw: kv}).logits
                if kv.get_seq_length() != len(pre) + width:  # the model ignored the cache: fail, never score wrong
                    raise RuntimeError(f"the model did not extend the prefix's KV cache (passed as `{ckw}`); "
                                       "this transformers version changed its cache argument")
            dt = (time.time() - t + t_pre * len(b) / len(idx)) / len(b)
            for r, i in enumerate(b):
                c = items[i][1]
                vals = [float(first[c[0]])]
                if len(c) > 1:
                    assert logits is not None
                    lp = torch.log_softmax(logits[r, : len(c) - 1].float(), -1)
                    vals += lp.gather(1, torch.tensor(c[1:], device=lp.device)[:, None])[:, 0].tolist()
                out[i] = ScoreResult(list(c), vals, Usage(len(pre) + len(c), 0, dt))

    def _score_independent(self, idxs: list[int], items: list, out: list) -> None:
        """Score each request with its own prefix, in batches cut by length; logits only from the first prefix end."""
        import torch

        for i in idxs:
            if not items[i][0]:
                out[i] = ScoreResult(items[i][1], [], Usage(0, 0, 0.0),
                                     error="empty prefix: the first token has no context")
        idxs = [i for i in idxs if out[i] is None]
        pad = self.tokenizer.pad_token_id
        lengths = [len(items[i][0]) + len(items[i][1]) for i in idxs]
        for part in padded_batches(lengths, self.batch_size, self.max_padding):
            b = [idxs[k] for k in part]
            seqs = [items[i][0] + items[i][1] for i in b]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(b), width), pad, dtype=torch.long)
            att = torch.zeros((len(b), width), dtype=torch.long)
            for r, x in enumerate(seqs):  # right padding
                ids[r, : len(x)] = torch.tensor(x)
                att[r, : len(x)] = 1
            # logits from the earliest position any row scores; position p sits at row index p - start
            start = min(len(items[i][0]) for i in b) - 1
            t = time.time()
            logits = self._forward(ids, att, logits_to_keep=width - start).logits
            dt = (time.time() - t) / len(b)
            for r, i in enumerate(b):
                pre, cont = items[i]
                lp = torch.log_softmax(logits[r, len(pre) - 1 - start : len(pre) + len(cont) - 1 - start].float(), -1)
                vals = lp.gather(1, torch.tensor(cont, device=lp.device)[:, None])[:, 0].tolist()
                out[i] = ScoreResult(cont, vals, Usage(len(pre) + len(cont), 0, dt))
