"""Pydantic models for run configs, YAML loading, and one-line error messages."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from harness.errors import UserError

BACKENDS = ("hf", "gguf", "openai", "vllm", "python", "filter")
#: compressors that are functions, not language models: `python/<module>:<function>` and `filter/<kind>` (RAG filters)
FUNCTION_BACKENDS = ("python", "filter")
#: backends that are language models (every role); `python/` names a compressor function (compressor role only)
LM_BACKENDS = ("hf", "gguf", "openai", "vllm")
#: an LM compressor's options: a length instruction line (max_words) and IB terms of its compressions (ib_terms)
LM_OPTIONS = ("max_words", "ib_terms")
ARMS = ("compressed", "full-context", "no-context", "gold-context")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """One model role. `model` is a spec `backend/name`, e.g. `gguf/smollm2-135m`.

    A compressor may also be `python/<module>:<function>` (a user's own compressor, see harness.compressors.python),
    called with `options` as keyword arguments.
    """

    model: str
    # auto: bfloat16 on a GPU or a CPU with bf16 matrix units (AMX, AVX512-BF16), else float32
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    device: str = "auto"
    # rows per generate call (sampling at 8 decodes 2.4–3.6× faster than at 1); transformers scoring: 4× the rows
    batch_size: int = Field(8, ge=1)
    revision: str | None = None
    trust_remote_code: bool = False
    context_window: int | None = Field(None, ge=16)
    # OpenAI-compatible servers
    base_url: str | None = None
    api_key_env: str | None = None
    api: Literal["chat", "completions"] = "chat"
    max_concurrency: int = Field(4, ge=1)
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    scoring: Literal["echo", "vllm-prompt-logprobs", "off"] = "echo"
    tokenizer: str | None = None  # local spec (gguf/alias, hf/folder) whose tokenizer and chat template to use
    options: dict[str, Any] = Field(default_factory=dict)  # python/ compressors: keyword arguments of the function

    @model_serializer(mode="wrap")
    def _drop_empty_options(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, Any]:
        """`options` is left out of dumps when empty, so every key derived from an LM's config stays as it was."""
        d = handler(self)
        if not d.get("options"):
            d.pop("options", None)
        return d

    @model_validator(mode="after")
    def _python_spec(self) -> ModelConfig:
        if self.backend == "python":
            mod, sep, fn = self.name.partition(":")
            if not sep or not mod or not fn:
                raise ValueError(f"'{self.model}' is not a python compressor spec; write python/<module>:<function>, "
                                 "e.g. python/mypkg.filters:keep_sentences")
        elif self.options and self.backend in LM_BACKENDS:  # an LM compressor's knobs (harness.compressors.lm)
            for k in self.options:
                if k not in LM_OPTIONS:
                    raise ValueError(f"options.{k}: an LM compressor ('{self.model}') takes only "
                                     f"{', '.join(LM_OPTIONS)}")  # values: checked by harness.compressors.lm
        elif self.options and self.backend != "filter":
            raise ValueError(f"options are the keyword arguments of a python/ compressor or the knobs of a filter/ "
                             f"one; '{self.model}' takes none")
        return self

    @field_validator("tokenizer")
    @classmethod
    def _tok_spec(cls, v: str | None) -> str | None:
        if v is not None and v.partition("/")[0] not in ("hf", "gguf"):
            raise ValueError(f"'{v}' must be a local gguf/... or hf/... spec")
        return v

    @field_validator("model")
    @classmethod
    def _spec(cls, v: str) -> str:
        backend, sep, name = v.partition("/")
        if not sep or not name:
            raise ValueError(f"'{v}' is not a model spec; write backend/name with backend one of {', '.join(BACKENDS)}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}' in '{v}'; use one of {', '.join(BACKENDS)}")
        return v

    @property
    def backend(self) -> str:
        return self.model.partition("/")[0]

    @property
    def name(self) -> str:
        return self.model.partition("/")[2]


class Roles(_Strict):
    compressor: ModelConfig | None = None
    predictor: ModelConfig
    scorer: ModelConfig | None = None
    judge: ModelConfig | None = None

    @model_validator(mode="after")
    def _python_only_compresses(self) -> Roles:
        for role in ("predictor", "scorer", "judge"):
            mc = getattr(self, role)
            if mc is not None and mc.backend in FUNCTION_BACKENDS:
                raise ValueError(f"models.{role}.model: '{mc.model}' is a {mc.backend}/ compressor; the {role} "
                                 f"must be a language model ({', '.join(LM_BACKENDS)})")
            if mc is not None and mc.options:
                raise ValueError(f"models.{role}.options: only a compressor takes options; remove them")
        return self


class TaskConfig(_Strict):
    name: str
    size: int | None = Field(None, ge=1)
    seed: int = 0
    split: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class Prompt(_Strict):
    system: str | None = None
    user: str


DEFAULT_PROMPTS = {
    "compressor": Prompt(
        system="You are a careful assistant who summarises documents.",
        user=(
            "Read the context and write a short summary that keeps every fact needed to answer the question. "
            "Do not answer the question.\n\nContext:\n{context}\n\nQuestion: {question}\n\nSummary:"
        ),
    ),
    "predictor": Prompt(
        system="You answer questions using only the information given.",
        user="Information:\n{summary}\n\nQuestion: {question}\n{choices}\nAnswer briefly.",
    ),
    "full_context": Prompt(
        system="You answer questions using only the information given.",
        user="Information:\n{context}\n\nQuestion: {question}\n{choices}\nAnswer briefly.",
    ),
    "no_context": Prompt(
        system="You answer questions.",
        user="Question: {question}\n{choices}\nAnswer briefly.",
    ),
}

_PLACEHOLDERS = {
    "compressor": ({"question", "context"}, {"question", "context"}),
    "predictor": ({"question", "summary"}, {"question", "summary", "choices"}),
    "full_context": ({"question", "context"}, {"question", "context", "choices"}),
    "no_context": ({"question"}, {"question", "choices"}),
}


class Prompts(_Strict):
    compressor: Prompt = DEFAULT_PROMPTS["compressor"]
    predictor: Prompt = DEFAULT_PROMPTS["predictor"]
    full_context: Prompt = DEFAULT_PROMPTS["full_context"]
    no_context: Prompt = DEFAULT_PROMPTS["no_context"]

    @model_validator(mode="after")
    def _check_placeholders(self) -> Prompts:
        import string

        for role, (required, allowed) in _PLACEHOLDERS.items():
            p: Prompt = getattr(self, role)
            found = {f for _, f, _, _ in string.Formatter().parse(p.user) if f}
            missing = required - found
            extra = found - allowed
            if missing:
                raise ValueError(f"prompts.{role}.user must contain {{{sorted(missing)[0]}}}")
            if extra:
                raise ValueError(
                    f"prompts.{role}.user has unknown placeholder {{{sorted(extra)[0]}}}; allowed: {sorted(allowed)}"
                )
        return self


class GenerationConfig(_Strict):
    """How one role generates (the config section); not `harness.records.Generation`, what a backend returns."""

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)


class GenerationSettings(_Strict):
    compressor: GenerationConfig = GenerationConfig(max_new_tokens=128)
    predictor: GenerationConfig = GenerationConfig(max_new_tokens=24)


class Output(_Strict):
    dir: str = "results/{name}"
    cache: str | None = "results/cache.sqlite"
    store: str | None = "results/store.db"  # SQLite path or postgresql:// URL; null: JSONL files only

    @field_validator("dir")
    @classmethod
    def _dir_fields(cls, v: str) -> str:
        import string

        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(v) if f is not None}
        except ValueError as e:
            raise ValueError(f"'{v}' is not a folder template ({e}); write {{{{ }}}} for a literal brace") from None
        bad = sorted(fields - {"name"})
        if bad:
            raise ValueError(f"unknown placeholder {{{bad[0]}}} in '{v}'; only {{name}} is allowed")
        return v


class MIConfig(_Strict):
    """Mutual information I(X;Z|Q): M sampled compressions per context, scored under every context of its group."""

    samples_per_context: int = Field(2, ge=1)
    contexts_per_group: int | None = Field(None, ge=2)
    min_contexts: int = Field(2, ge=2)
    scorers: list[Literal["self", "scorer"]] = ["self"]
    mode: Literal["conditional", "paper"] = "conditional"
    predictor_reads: Literal["sample0", "greedy"] = "sample0"
    temperature: float = Field(1.0, gt=0)
    n_boot: int = Field(1000, ge=100)


class RetrievalConfig(_Strict):
    """Retrieval for RAG: each sample's context becomes the `top_k` passages retrieved for its question.

    `corpus`: `task` (every passage of the task's samples, pooled), `sample` (each sample's own passages: the
    distractor setting), or a folder of .txt/.md/.jsonl files.
    """

    corpus: str = "task"
    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    top_k: int = Field(5, ge=1, le=1000)
    embedder: str = "minilm-l6"  # embedding pack of dense/hybrid retrieval (`harness models fetch minilm-l6`)

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty; write 'task', 'sample' or a folder of .txt/.md/.jsonl files")
        return v


RESEARCH_ARMS = ("compressor-predictor", "predictor-only", "no-retrieval", "oracle-evidence")


class ResearchConfig(_Strict):
    """Agentic Deep-Research mode (`harness.research`): the predictor plans subqueries, compressors search a corpus
    and summarise for each, the predictor answers from the summaries; up to `rounds` rounds of subqueries.

    `compressors`: one compressor-predictor cell per entry (a spec, or a full role config; default
    `models.compressor`). `corpus`: `task` (every sample's passages, deduplicated), `sample` (each sample searches
    only its own passages: the setting where a group's samples, one question text over different worlds, share their
    subqueries, so a top-level `mi:` section can estimate the summaries' I(X;Z|Q), `harness.research.mi`) or a
    folder of .txt/.md/.jsonl. `protocol`: how the predictor plans: `json` (a JSON reply) or `tools` (an OpenAI
    tool call it is made to make; an openai/ predictor only).
    """

    arms: list[Literal["compressor-predictor", "predictor-only", "no-retrieval", "oracle-evidence"]] = Field(
        default_factory=lambda: list(RESEARCH_ARMS), min_length=1)
    compressors: list[str | ModelConfig] = Field(default_factory=list)
    corpus: str = "task"
    retriever: Literal["bm25", "dense", "hybrid"] = "bm25"
    embedder: str = "minilm-l6"
    top_k: int = Field(3, ge=1, le=100)
    max_subqueries: int = Field(3, ge=1, le=16)
    rounds: int = Field(1, ge=1, le=10)
    plan_max_new_tokens: int = Field(96, ge=8)
    protocol: Literal["json", "tools"] = "json"

    @model_serializer(mode="wrap")
    def _drop_default_protocol(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
                               ) -> dict[str, Any]:
        """`protocol` is left out of dumps while it is the default (json), so research cell ids stay as they were."""
        d = handler(self)
        if d.get("protocol") == "json":
            d.pop("protocol", None)
        return d

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("write 'task' (every sample's passages), 'sample' (each sample searches its own "
                             "passages) or a folder of .txt/.md/.jsonl files")
        return v


class Price(_Strict):
    """API prices in dollars per million tokens."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)


class SweepSpec(_Strict):
    """A grid: compressors × predictors × tasks × knob values, expanded into cells.

    Entries of `compressors`/`predictors` are model specs (`gguf/smollm2-135m`) or full role configs; a spec
    inherits the other fields (batch_size, dtype…) of `models.compressor`/`models.predictor`. `knobs` maps a
    dotted config path (`generation.compressor.max_new_tokens`, `seed`, `task.options.context_tokens`…) to the
    values to try.
    """

    compressors: list[str | ModelConfig] = Field(min_length=1)
    predictors: list[str | ModelConfig] = Field(min_length=1)
    tasks: list[TaskConfig] = Field(default_factory=list)
    knobs: dict[str, list[Any]] = Field(default_factory=dict)

    @field_validator("knobs")
    @classmethod
    def _knob_paths(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in v.items():
            top = path.split(".")[0]
            if top in ("models", "sweep", "output", "name", "arms", "prices"):
                raise ValueError(f"knob '{path}' cannot be swept; list models under sweep.compressors/predictors")
            if not values:
                raise ValueError(f"knob '{path}' has no values; list at least one")
        return v


class RunConfig(_Strict):
    """A whole run: roles, task, prompts, generation, arms, seeds and output."""

    name: str = "run"
    task: TaskConfig
    models: Roles
    arms: list[Literal["compressed", "full-context", "no-context", "gold-context"]] = ["compressed"]
    prompts: Prompts = Prompts()
    generation: GenerationSettings = GenerationSettings()
    overflow: Literal["error", "truncate"] = "error"
    seed: int = 0
    mi: MIConfig | None = None
    retrieval: RetrievalConfig | None = None
    output: Output = Output()
    # model spec -> API prices (dollars per million tokens); models without a price cost no dollars
    prices: dict[str, Price] = Field(default_factory=dict)
    sweep: SweepSpec | None = None
    research: ResearchConfig | None = None

    @model_validator(mode="after")
    def _roles_for_arms(self) -> RunConfig:
        if self.research is not None:  # research runs have their own arms (research.arms); `arms` is not read
            if "compressor-predictor" in self.research.arms and not self.research.compressors \
                    and self.models.compressor is None:
                raise ValueError("research.arms includes 'compressor-predictor' but neither research.compressors "
                                 "nor models.compressor is set; add a compressor or drop the arm")
            if self.sweep is not None or self.retrieval is not None:
                raise ValueError("research: cannot be combined with sweep: or retrieval: (it searches its own "
                                 "corpus per subquery); remove them")
            if self.mi is not None and "scorer" in self.mi.scorers and self.models.scorer is None:
                raise ValueError("mi.scorers lists 'scorer' but models.scorer is not set; add a scorer model")
            return self
        if "compressed" in self.arms and self.models.compressor is None:
            raise ValueError(
                "arms includes 'compressed' but models.compressor is not set; add a compressor or drop the arm"
            )
        if not self.arms:
            raise ValueError("arms is empty; list at least one of " + ", ".join(ARMS))
        if self.mi is not None:
            if self.models.compressor is None:
                raise ValueError("mi needs models.compressor (the channel whose information is measured)")
            if "scorer" in self.mi.scorers and self.models.scorer is None:
                raise ValueError("mi.scorers lists 'scorer' but models.scorer is not set; add a scorer model")
            if "self" in self.mi.scorers and self.models.compressor.backend in FUNCTION_BACKENDS:
                raise ValueError(f"mi.scorers: '{self.models.compressor.model}' is a "
                                 f"{self.models.compressor.backend}/ compressor, which cannot "
                                 "score its own output ('self'); set models.scorer and mi.scorers: [scorer]")
        return self

    def output_dir(self) -> Path:
        return Path(self.output.dir.format(name=self.name))


def _format_error(e: ValidationError, source: str) -> str:
    errs = e.errors()
    # an unknown (misspelt) field usually also makes a required one "missing": report the typo
    errs = sorted(errs, key=lambda er: er["type"] != "extra_forbidden")
    err = errs[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = tuple(err["loc"][:-1])
        missing = [str(x["loc"][-1]) for x in errs if x["type"] == "missing" and tuple(x["loc"][:-1]) == parent]
        hint = difflib.get_close_matches(str(err["loc"][-1]), missing, n=1) if missing else []
        fix = f"did you mean '{hint[0]}'?" if hint else "check its spelling or remove it"
        return f"{source}: unknown field '{loc}'; {fix}"
    if kind == "missing":
        return f"{source}: missing required field '{loc}'; add it"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: field '{loc}': {msg}"


def parse_config(data: Any, source: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a YAML mapping at the top level")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(_format_error(e, source)) from None


def _read_yaml(path: str | Path, overrides: dict[str, Any] | None, what: str) -> tuple[Path, Any]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"config file '{p}' not found; pass the path of a YAML {what}")
    if not p.is_file():
        raise UserError(f"config file '{p}' is a folder; pass the path of a YAML {what}")
    try:
        data = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start:e.start + 1].hex()} at offset {e.start}); "
                        "save the config as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}: invalid YAML{where}; fix the syntax") from None
    if overrides:
        data = _deep_merge(data or {}, overrides)
    return p, data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML run config; errors become one-line UserErrors."""
    p, data = _read_yaml(path, overrides, "config (see configs/)")
    return parse_config(data, str(p))


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A run config with a `sweep` section; `models.predictor` defaults to the first swept predictor."""
    p, data = _read_yaml(path, overrides, "sweep config (see configs/sweep-*.yaml)")
    return parse_sweep_config(data, str(p))


def parse_sweep_config(data: Any, source: str = "config") -> RunConfig:
    """Validate a sweep config mapping (`load_sweep_config` after reading the file; the Python API's dicts)."""
    if isinstance(data, dict):
        data = dict(data)
        sw = data.get("sweep")
        if not isinstance(sw, dict):
            raise UserError(f"{source}: missing 'sweep' section; add sweep.compressors and sweep.predictors")
        models = data.get("models") or {}
        if isinstance(models, dict):  # anything else is left for validation to name
            data["models"] = models = dict(models)
            for role, key in (("predictor", "predictors"), ("compressor", "compressors")):
                first = (sw.get(key) or [None])[0]
                if models.get(role) is None and first is not None:
                    models[role] = {"model": first} if isinstance(first, str) else first
    return parse_config(data, source)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
