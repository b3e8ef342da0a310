"""The plan of a sweep, and every key derived from a config: cells, compression units and compressions.

A config (a sweep, or one run) expands into compression units and cells:

- a **compression unit** is everything one compressor makes for one task under one setting of the knobs that
  shape its output: the compressions (the greedy one the predictor reads, or M sampled ones for MI) and the MI
  estimates scored from them (N contexts per question group);
- a **cell** is one task × arm × (compressor) × predictor × knob setting; a compressed cell reads one unit.

This module is the one place that derives a key: the cell hash, the unit key, the compressions' natural key
(`compression_knob_hash`, `sample_seed`, `GREEDY_INDEX`) and which compression the predictor reads
(`read_variant`). Nothing here loads a model.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.config import LM_BACKENDS, ModelConfig, RunConfig, TaskConfig, parse_config
from harness.errors import UserError
from harness.pipeline.stages import params_from
from harness.records import GenParams, Sample
from harness.store.redact import redact_url
from harness.store.store import knob_hash

#: the store's `sample_index` of the greedy compression; sampled MI compressions are j = 0..M-1
GREEDY_INDEX = -1

#: ModelConfig fields that change how calls are made, never what a model answers: kept out of every key, where each
#: takes the value it had by default when keys were first written (so a later change of a default, such as
#: batch_size 4 → 8, changes no id)
TRANSPORT_KEY_VALUES: dict[str, Any] = {"device": "auto", "batch_size": 4, "max_concurrency": 4, "max_retries": 4,
                                        "timeout_s": 120.0, "api_key_env": None, "trust_remote_code": False}
TRANSPORT_FIELDS = tuple(TRANSPORT_KEY_VALUES)

#: config sections added after keys were first written: left out of every key while unset, so older ids stay
LATER_SECTIONS = ("retrieval", "research")


# ---------------------------------------------------------------------------- model and compression keys


def model_key_fields(mc: ModelConfig) -> dict[str, Any]:
    """The part of a model config that decides its outputs: the one source of every key derived from a model
    (cell hash, compression unit, the sweep's model and backend maps).

    Transport and execution settings (TRANSPORT_FIELDS: timeouts, retries, concurrency, batch size, device, which
    environment variable holds the key, the remote-code permission) are set to fixed values (TRANSPORT_KEY_VALUES,
    the defaults when keys were first written) rather than dropped, so the ids of stores written before stay.
    `base_url` stays, with its credentials hidden (`redact_url`): it names which server, and so which weights,
    answers, as in the backend identity; a rotated key or password keeps every id.
    """
    d = mc.model_dump(mode="json")
    d.update(TRANSPORT_KEY_VALUES)
    d["base_url"] = redact_url(d["base_url"])
    return d


def model_key(mc: ModelConfig) -> str:
    """A short hash of `model_key_fields`: configs with one key get one backend, one model id."""
    return knob_hash(model_key_fields(mc))


def compression_knobs(cfg: RunConfig) -> dict[str, Any]:
    """Everything besides the model, sample, seed and sample number that shapes a compression."""
    knobs: dict[str, Any] = {
        "task": cfg.task.model_dump(mode="json"),
        "prompt": cfg.prompts.compressor.model_dump(mode="json"),
        "generation": cfg.generation.compressor.model_dump(mode="json"),
        "overflow": cfg.overflow,
    }
    if cfg.mi is not None:
        knobs["mi_temperature"] = cfg.mi.temperature
    for k in LATER_SECTIONS:  # e.g. retrieval decides the context the compressor reads
        if getattr(cfg, k, None) is not None:
            knobs[k] = getattr(cfg, k).model_dump(mode="json")
    mc = cfg.models.compressor
    if mc is not None and mc.backend in LM_BACKENDS and mc.options.get("max_words") is not None:
        knobs["max_words"] = mc.options["max_words"]  # an LM's length instruction, in the key only when set
    return knobs


def compression_knob_hash(cfg: RunConfig) -> str:
    """The `knob_hash` of a config's compressions in the results store."""
    return knob_hash(compression_knobs(cfg))


def sample_seed(seed: int, sample_id: str, j: int) -> int:
    """The seed of MI compression j of one sample: a stable hash of (run seed, sample id, j), below 2**31.

    Every (sample, j) gets its own draw, so compressions of different contexts are independent; 31 bits fit
    every backend's seed field (llama.cpp's is 32-bit) and the store's integer column.
    """
    h = hashlib.blake2b(json.dumps([int(seed), str(sample_id), int(j)]).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") & 0x7FFFFFFF


def sampling_params(cfg: RunConfig, sample_id: str, j: int) -> GenParams:
    """Plain sampling (no top-k/top-p/min-p) at the MI temperature, seeded per (sample, j) by `sample_seed`."""
    assert cfg.mi is not None
    g = cfg.generation.compressor
    return GenParams(max_new_tokens=g.max_new_tokens, temperature=cfg.mi.temperature, top_p=1.0, top_k=0,
                     seed=sample_seed(cfg.seed, sample_id, j))


@dataclass(frozen=True)
class Variant:
    """One compression of one sample: the greedy one (index GREEDY_INDEX) or MI sample j (index j), with the
    parameters it is generated with. (kind, index, params.seed) is its part of the store's natural key."""

    kind: str  # "greedy" or "sample"
    index: int
    params: GenParams

    @property
    def seed(self) -> int:
        return self.params.seed


def reads_sampled(cfg: RunConfig) -> bool:
    """Whether the compressed arm's predictor reads sampled compression j = 0 (the channel MI describes) rather
    than a separate greedy one: the one place this is decided."""
    return cfg.mi is not None and cfg.mi.predictor_reads == "sample0"


def predictor_kind(cfg: RunConfig) -> str:
    """"sample" or "greedy": the kind of compression the compressed arm's predictor reads."""
    return "sample" if reads_sampled(cfg) else "greedy"


def read_key(cfg: RunConfig) -> tuple[str, int]:
    """(kind, index) of the compression the compressed arm's predictor reads, the same for every sample."""
    return ("sample", 0) if reads_sampled(cfg) else ("greedy", GREEDY_INDEX)


def read_variant(cfg: RunConfig, sample_id: str) -> Variant:
    """The compression of `sample_id` that the compressed arm's predictor reads."""
    if reads_sampled(cfg):
        return Variant("sample", 0, sampling_params(cfg, sample_id, 0))
    return Variant("greedy", GREEDY_INDEX, params_from(cfg.generation.compressor, cfg.seed))


def draws_per_context(cfg: RunConfig) -> int:
    """M, the sampled compressions per context for MI: `mi.samples_per_context`, but 1 for a sampling-free
    compressor (`python/`, `filter/`), whose draws would all be the same text (see harness.compressors.python)."""
    assert cfg.mi is not None
    mc = cfg.models.compressor
    return 1 if mc is not None and mc.backend not in LM_BACKENDS else cfg.mi.samples_per_context


def compression_variants(cfg: RunConfig, sample_id: str) -> list[Variant]:
    """Every compression a config makes of one sample: the greedy one when the compressed arm reads it, and the
    M sampled ones for MI."""
    out: list[Variant] = []
    if "compressed" in cfg.arms and not reads_sampled(cfg):
        out.append(read_variant(cfg, sample_id))
    if cfg.mi is not None:
        out += [Variant("sample", j, sampling_params(cfg, sample_id, j)) for j in range(draws_per_context(cfg))]
    return out


def mi_knobs(cfg: RunConfig) -> dict[str, Any] | None:
    """What shapes a config's MI estimates besides the compressions' knob hash and the two key columns of an MI
    row (mode, scorer): M, N, the smallest group kept, the bootstrap size and the seed (of the draws and of the
    bootstrap). None without MI."""
    if cfg.mi is None:
        return None
    mi = cfg.mi
    return {"samples_per_context": draws_per_context(cfg), "contexts_per_group": mi.contexts_per_group,
            "min_contexts": mi.min_contexts, "n_boot": mi.n_boot, "seed": cfg.seed}


def mi_knob_hash(cfg: RunConfig) -> str:
    """The `knob_hash` of a unit's MI rows in the results store: its compressions' knob hash with `mi_knobs`, so
    estimates with another M or N are other rows. Without MI, the compressions' knob hash."""
    kh = compression_knob_hash(cfg)
    mk = mi_knobs(cfg)
    return kh if mk is None else knob_hash({"compressions": kh, "mi": mk})


def unit_key_fields(cfg: RunConfig) -> dict[str, Any]:
    """The natural key of a compression unit: the compressor's identity, its compressions' knob hash and seed,
    which compressions it makes (the greedy one or not; M samples), and what shapes its MI estimates (N, the
    smallest group, the bootstrap, the mode, the scorers and the proxy scorer's identity). Nothing else."""
    assert cfg.models.compressor is not None
    mi = cfg.mi
    d: dict[str, Any] = {"compressor": model_key_fields(cfg.models.compressor), "knobs": compression_knob_hash(cfg),
                         "seed": cfg.seed, "greedy": "compressed" in cfg.arms and not reads_sampled(cfg), "mi": None}
    if mi is not None:
        sc = cfg.models.scorer if "scorer" in mi.scorers else None
        d["mi"] = {**(mi_knobs(cfg) or {}), "mode": mi.mode, "scorers": sorted(set(mi.scorers)),
                   "scorer": model_key_fields(sc) if sc is not None else None}
    return d


# ---------------------------------------------------------------------------- units, cells, plan


def _short(spec: str) -> str:
    return spec.partition("/")[2].replace("/", "_") or spec


@dataclass
class CompressUnit:
    """All compressions one compressor makes for one task under one compressor-side knob setting, and the MI
    estimates scored from them. Units that differ only in M or N share their compressions (`knob_hash`, the
    compressions' key) but not their MI rows (`mi_hash`)."""

    key: str
    cfg: RunConfig  # an expanded config with this compressor and these knobs
    task_key: str
    knob_hash: str  # the compressions' knob hash
    mi_hash: str = ""  # the knob hash of this unit's MI rows (and the `knob_hash` in its cells' knobs)

    def __post_init__(self) -> None:
        if not self.mi_hash:
            self.mi_hash = mi_knob_hash(self.cfg)

    @property
    def compressor(self) -> ModelConfig:
        assert self.cfg.models.compressor is not None
        return self.cfg.models.compressor


@dataclass
class Cell:
    """One task × arm × (compressor) × predictor × knob setting."""

    cell_id: str
    cfg: RunConfig
    arm: str
    task_key: str
    unit: str | None  # the CompressUnit the compressed arm reads
    knobs: dict[str, Any]


@dataclass
class Plan:
    name: str
    run_id: str
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    #: the `retrieval:` section each task key reads its contexts through (None: the task's own documents)
    retrievals: dict[str, Any] = field(default_factory=dict)
    units: dict[str, CompressUnit] = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)


def _set_path(d: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if nxt is None:
            nxt = cur[p] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"sweep.knobs.{path}: '{p}' is not a section; use a dotted path to a config field")
        cur = nxt
    cur[parts[-1]] = copy.deepcopy(value)


def _role(entry: str | ModelConfig, base: ModelConfig | None) -> dict[str, Any]:
    if isinstance(entry, ModelConfig):
        return entry.model_dump(mode="json")
    d = base.model_dump(mode="json") if base is not None else {}
    d["model"] = entry
    return d


def _cell_hash(rc: RunConfig, arm: str) -> str:
    """What shapes a cell's predictions: everything but output, naming, transport settings and, off the compressed
    arm, compression."""
    keep = rc.model_dump(mode="json")
    for role in ("compressor", "predictor"):
        mc = getattr(rc.models, role)
        keep["models"][role] = model_key_fields(mc) if mc is not None else None
    for k in ("name", "output", "prices", "sweep", "arms"):
        keep.pop(k, None)
    for k in LATER_SECTIONS:
        if keep.get(k) is None:
            keep.pop(k, None)
    keep["models"].pop("scorer", None)
    keep["models"].pop("judge", None)
    if arm != "compressed":
        keep["models"].pop("compressor", None)
        keep["prompts"].pop("compressor", None)
        keep["generation"].pop("compressor", None)
        keep.pop("mi", None)
    keep["arm"] = arm
    return knob_hash(keep)


def _task_key(rc: RunConfig) -> str:
    """The key of the samples a config's stages read: its task, and its retrieval section when it has one."""
    if rc.retrieval is None:
        return knob_hash(rc.task.model_dump(mode="json"))
    # retrieved contexts are other samples: a key of their own
    return knob_hash({"task": rc.task.model_dump(mode="json"), "retrieval": rc.retrieval.model_dump(mode="json")})


def run_knobs(cfg: RunConfig) -> dict[str, Any]:
    """The knobs a `harness run` cell records (as runs always have)."""
    return {"compressor_generation": cfg.generation.compressor.model_dump(),
            "predictor_generation": cfg.generation.predictor.model_dump(), "seed": cfg.seed,
            "mi": cfg.mi.model_dump() if cfg.mi else None}


def expand_run(cfg: RunConfig, run_id: str) -> Plan:
    """A `harness run` config as a plan: one cell per arm, id `{run_id}/{arm}` (as runs always had), and one
    compression unit when the compressed arm or MI needs compressions."""
    plan = Plan(name=cfg.name, run_id=run_id)
    task_key = _task_key(cfg)
    plan.tasks[task_key] = cfg.task
    plan.retrievals[task_key] = cfg.retrieval
    unit_key = None
    if cfg.models.compressor is not None and ("compressed" in cfg.arms or cfg.mi is not None):
        unit_key = knob_hash(unit_key_fields(cfg))
        plan.units[unit_key] = CompressUnit(unit_key, cfg, task_key, compression_knob_hash(cfg))
    for arm in cfg.arms:
        cid = f"{run_id}/{arm}"
        plan.cells[cid] = Cell(cid, cfg, arm, task_key, unit_key if arm == "compressed" else None, run_knobs(cfg))
    return plan


def expand(cfg: RunConfig) -> Plan:
    """Expand a sweep config into compression units and cells (deduplicated)."""
    sw = cfg.sweep
    if sw is None:
        raise UserError("this config has no 'sweep' section; add sweep.compressors and sweep.predictors")
    plan = Plan(name=cfg.name, run_id=f"sweep-{cfg.name}")
    base = cfg.model_dump(mode="json")
    base["sweep"] = None
    tasks = sw.tasks or [cfg.task]
    keys = sorted(sw.knobs)
    settings = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(sw.knobs[k] for k in keys))]
    for task, setting, comp, pred in itertools.product(tasks, settings, sw.compressors, sw.predictors):
        d = copy.deepcopy(base)
        d["task"] = task.model_dump(mode="json")
        d["models"]["compressor"] = _role(comp, cfg.models.compressor)
        d["models"]["predictor"] = _role(pred, cfg.models.predictor)
        for path, value in setting.items():
            _set_path(d, path, value)
        where = ", ".join(f"{k}={v}" for k, v in setting.items())
        rc = parse_config(d, f"sweep cell ({d['models']['compressor']['model']} → {d['models']['predictor']['model']}"
                             f"{', ' + where if where else ''})")
        task_key = _task_key(rc)
        plan.tasks.setdefault(task_key, rc.task)
        plan.retrievals.setdefault(task_key, rc.retrieval)
        unit_key = None
        needs_compression = "compressed" in rc.arms or rc.mi is not None
        if needs_compression:
            unit_key = knob_hash(unit_key_fields(rc))
            plan.units.setdefault(unit_key, CompressUnit(unit_key, rc, task_key, compression_knob_hash(rc)))
        for arm in rc.arms:
            h = _cell_hash(rc, arm)
            comp_name = _short(rc.models.compressor.model) if arm == "compressed" and rc.models.compressor else "-"
            cid = f"{cfg.name}/{rc.task.name}/{arm}/{comp_name}/{_short(rc.models.predictor.model)}/{h[:8]}"
            if cid not in plan.cells:
                plan.cells[cid] = Cell(cid, rc, arm, task_key, unit_key if arm == "compressed" else None, setting)
    return plan


def check_plan_retrieval(plan: Plan) -> None:
    """One-line errors for a `retrieval:` section that cannot run (missing corpus folder, unfetched embedder)."""
    from harness.retrieval import check_retrieval

    for rc in plan.retrievals.values():
        if rc is not None:
            check_retrieval(rc)


def task_samples(plan: Plan, task_key: str, samples: list[Sample], cache: Any) -> list[Sample]:
    """The samples a task key's stages read: retrieved through its `retrieval:` section, else as loaded."""
    rc = plan.retrievals.get(task_key)
    if rc is None:
        return list(samples)
    from harness.retrieval import retrieve_samples

    return retrieve_samples(samples, rc, cache)[0]


def legacy_mi_hash(plan: Plan, unit: CompressUnit) -> str | None:
    """The knob hash this unit's MI rows had before M and N were part of it (its compressions' knob hash), when
    no other unit of the plan shares its compressor and compressions (an older sweep then stored this unit's
    estimates under it); None otherwise, or without MI."""
    if unit.cfg.mi is None:
        return None
    twins = [u for u in plan.units.values() if u.cfg.mi is not None and u.task_key == unit.task_key
             and u.knob_hash == unit.knob_hash and model_key(u.compressor) == model_key(unit.compressor)]
    return unit.knob_hash if len(twins) == 1 else None


def adopt_legacy_mi(plan: Plan, store: Any, samples: dict[str, list[Any]],
                    compressor_id: Callable[[ModelConfig], int | None]) -> list[str]:
    """Keep the MI rows a sweep stored before M and N were in their key: a unit whose `legacy_mi_hash` holds an
    error-free pooled row of this run with the unit's mode, M and number of contexts takes that hash as its
    `mi_hash`, so resuming an old store estimates nothing again. Returns the keys of the units that did.

    `compressor_id` gives the store's model id of a compressor (None: not in the store).
    """
    from harness.pipeline.mi_stage import question_groups

    adopted = []
    for u in plan.units.values():
        old = legacy_mi_hash(plan, u)
        if old is None or old == u.mi_hash:
            continue
        assert u.cfg.mi is not None
        mid = compressor_id(u.compressor)
        if mid is None:
            continue
        n_ctx = sum(len(g) for g in question_groups(u.cfg, samples[u.task_key]))
        rows = store.rows("mi_estimates", run_id=plan.run_id, task=u.cfg.task.name, group_id="",
                          compressor_model_id=mid, knob_hash=old, mode=u.cfg.mi.mode)
        if any(r["error"] is None and r["n_samples"] == draws_per_context(u.cfg) and r["n_contexts"] == n_ctx
               for r in rows):
            u.mi_hash = old
            adopted.append(u.key)
    return adopted


def plan_models(plan: Plan) -> list[tuple[str, ModelConfig]]:
    """(config field, config) of every distinct model the plan uses (by `model_key`)."""
    out: dict[str, tuple[str, ModelConfig]] = {}
    for u in plan.units.values():
        out.setdefault(model_key(u.compressor), ("sweep.compressors", u.compressor))
        sc = u.cfg.models.scorer
        if sc is not None and u.cfg.mi is not None and "scorer" in u.cfg.mi.scorers:
            out.setdefault(model_key(sc), ("models.scorer", sc))
    for c in plan.cells.values():
        out.setdefault(model_key(c.cfg.models.predictor), ("sweep.predictors", c.cfg.models.predictor))
    for c in plan.cells.values():
        if c.cfg.models.judge is not None:
            out.setdefault(model_key(c.cfg.models.judge), ("models.judge", c.cfg.models.judge))
    return list(out.values())


# ---------------------------------------------------------------------------- dry run

#: how the dry run estimates tokens (no tokenizer is loaded)
TOKEN_ESTIMATE = ("chars/4: prompt tokens = characters of the rendered chat messages / 4 + 5 per message; "
                  "completions and compressions at max_new_tokens (an upper bound); a score request forwards its "
                  "continuation after its context's prefix, forwarded once per context (KV reuse)")


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


def _msg_tokens(msgs: list[dict[str, str]]) -> int:
    return sum(_tokens(m["content"]) + 5 for m in msgs)


@dataclass
class RoleCost:
    """Requests, estimated tokens, FLOPs (None: architecture unknown) and dollars (None: no price) of one role."""

    generate_requests: int = 0
    score_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float | None = 0.0
    dollars: float | None = None

    def call(self, arch: Any, price: Any, prompt: int, completion: int, *, score: bool = False,
             cached_prefix: int = 0) -> None:
        """One request: a generation, or a score request (all input) whose first `cached_prefix` tokens are
        already forwarded."""
        from harness.cost import dollars, flops_per_generation

        if score:
            self.score_requests += 1
        else:
            self.generate_requests += 1
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if self.flops is not None:
            self.flops = None if arch is None else (self.flops + flops_per_generation(arch, prompt, completion)
                                                    - flops_per_generation(arch, cached_prefix, 0))
        if price is not None:
            inp, out = (prompt + completion, 0) if score else (prompt, completion)
            self.dollars = (self.dollars or 0.0) + dollars(price, inp, out)

    def prefix(self, arch: Any, tokens: int) -> None:
        """A prefix forwarded once for the score requests that follow it (no request of its own)."""
        from harness.cost import flops_per_generation

        if self.flops is not None:
            self.flops = None if arch is None else self.flops + flops_per_generation(arch, tokens, 0)


def _open_store(url: str | None) -> Any:
    """The results store for reading, or None when there is none yet (a dry run creates nothing)."""
    from pathlib import Path

    from harness.store import Store

    if not url:
        return None
    if "://" not in url or url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:///").removeprefix("sqlite://")).expanduser()
        if not path.exists():
            return None
    return Store.open(url, create=False)


def _stored_model_id(store: Any, cfg: RunConfig, mc: ModelConfig, field: str) -> int | None:
    """The store's id of a model or compressor (its identity computed from its files, no weights loaded); None if
    absent."""
    from harness.backends.registry import make_backend

    if store is None:
        return None
    if mc.backend in LM_BACKENDS:
        ident = make_backend(mc, field=field).identity()
    else:  # a compressor that is not a language model (python/ ...)
        from harness.compressors import make_compressor

        ident = make_compressor(cfg, mc, field=field).identity()
    rows = store.rows("models", backend=ident.backend, name=redact_url(ident.name), revision=ident.revision,
                      dtype=ident.dtype, chat_template_hash=ident.chat_template_hash)
    return int(rows[0]["model_id"]) if rows else None


def dry_run(cfg: RunConfig, *, retry_errors: bool = False) -> dict[str, Any]:
    """What `harness sweep` would do for `cfg`, without loading a model: its cells and units, and the
    compressions, generate and score requests it will make with their estimated tokens, FLOPs and dollars.

    What the results store already holds is done, as the sweep counts it (stored errors too, unless
    `retry_errors`), so on a resumed sweep the counts are what remains. Requests that the response cache would
    answer are counted (they would reach no model). Counts assume no call fails and no prompt overflows; tokens
    are estimated as `TOKEN_ESTIMATE` says.
    """
    from harness.cost import model_arch
    from harness.metrics import build_judge_messages
    from harness.pipeline.mi_stage import question_groups
    from harness.preflight import check_models, load_samples
    from harness.prompts import arm_input, arm_messages, render

    plan = expand(cfg)
    models = plan_models(plan)
    check_models(models)
    check_plan_retrieval(plan)
    # the retriever runs (it is not an LM; nothing is cached or written), so contexts are the ones the sweep reads
    samples = {tk: task_samples(plan, tk, load_samples(t), None) for tk, t in plan.tasks.items()}
    store = _open_store(cfg.output.store)
    fields = {model_key(mc): f for f, mc in models}
    ids: dict[str, int | None] = {}

    def mid(mc: ModelConfig) -> int | None:
        k = model_key(mc)
        if k not in ids:
            ids[k] = _stored_model_id(store, cfg, mc, fields.get(k, "models"))
        return ids[k]

    def ok(row: Any) -> bool:
        if row is None:
            return False
        err = row.error if hasattr(row, "error") else row["error"]
        return err is None or not retry_errors

    archs: dict[str, Any] = {}

    def arch(mc: ModelConfig) -> Any:
        if mc.model not in archs:
            archs[mc.model] = model_arch(mc)
        return archs[mc.model]

    roles: dict[str, RoleCost] = {}
    price = cfg.prices.get
    try:
        if store is not None:
            adopt_legacy_mi(plan, store, samples, mid)
        units_out, seen = [], set()
        comp_total = comp_todo = 0
        for u in plan.units.values():
            rc, cm = u.cfg, u.compressor
            cmid = mid(cm)
            n_all = n_todo = 0
            for s in samples[u.task_key]:
                prompt = _msg_tokens(render(rc.prompts.compressor, question=s.question, context=s.context))
                for v in compression_variants(rc, s.id):
                    ck = (model_key(cm), rc.task.name, u.knob_hash, s.id, v.index, v.seed)
                    if ck in seen:
                        continue
                    seen.add(ck)
                    n_all += 1
                    if cmid is not None and ok(store.find_compression(
                            compressor_model_id=cmid, task=rc.task.name, sample_id=s.id, knob_hash=u.knob_hash,
                            sample_index=v.index, seed=v.seed)):
                        continue
                    n_todo += 1
                    if cm.backend in LM_BACKENDS:  # a python/ compressor's call is no model request
                        roles.setdefault("compressor", RoleCost()).call(arch(cm), price(cm.model), prompt,
                                                                        v.params.max_new_tokens)
            comp_total += n_all
            comp_todo += n_todo
            units_out.append({"key": u.key, "task": rc.task.name, **unit_key_fields(rc), "knob_hash": u.knob_hash,
                              "mi_hash": u.mi_hash, "compressions": n_all, "compressions_todo": n_todo})

        # MI: every compression scored under every context of its group, per scorer (self first, then the proxy)
        mi_seen: set[tuple[Any, ...]] = set()
        mi_out = []
        for label in ("self", "scorer"):
            for u in plan.units.values():
                rc, mi = u.cfg, u.cfg.mi
                if mi is None or label not in mi.scorers:
                    continue
                sc = u.compressor if label == "self" else rc.models.scorer
                if sc is None:
                    continue
                k = (model_key(u.compressor), model_key(sc), rc.task.name, u.mi_hash, mi.mode)
                if k in mi_seen:
                    continue
                mi_seen.add(k)
                cmid, smid = mid(u.compressor), mid(sc)
                done = cmid is not None and smid is not None and any(ok(r) for r in store.rows(
                    "mi_estimates", run_id=plan.run_id, task=rc.task.name, group_id="", compressor_model_id=cmid,
                    scorer_model_id=smid, knob_hash=u.mi_hash, mode=mi.mode))
                groups = question_groups(rc, samples[u.task_key])
                n_req = sum(len(g) ** 2 * draws_per_context(rc) for g in groups)
                mi_out.append({"unit": u.key, "scorer": label if label == "self" else sc.model, "done": done,
                               "groups": len(groups), "contexts": sum(len(g) for g in groups),
                               "score_requests": 0 if done else n_req})
                if done:
                    continue
                role = roles.setdefault("compressor" if label == "self" else "scorer", RoleCost())
                c_tok = rc.generation.compressor.max_new_tokens
                for g in groups:
                    ss = [samples[u.task_key][i] for i in g]
                    for x in ss:
                        q = ss[0].question  # conditional: one question per group; paper: each context's own
                        p = _msg_tokens(render(rc.prompts.compressor, question=x.question if mi.mode == "paper"
                                               else q, context=x.context))
                        role.prefix(arch(sc), p)
                        for _ in range(len(g) * draws_per_context(rc)):
                            role.call(arch(sc), price(sc.model), p, c_tok, score=True, cached_prefix=p)

        # predictions: one generate request per cell × sample, or one score request for a continuation sample
        cells_out = []
        for c in plan.cells.values():
            rc, pm = c.cfg, c.cfg.models.predictor
            u = plan.units[c.unit] if c.unit else None
            pmid = mid(pm)
            n_todo = 0
            for s in samples[c.task_key]:
                comp_id, row = None, None
                if u is not None:
                    v = read_variant(rc, s.id)
                    cmid = mid(u.compressor)
                    row = None if cmid is None else store.find_compression(
                        compressor_model_id=cmid, task=rc.task.name, sample_id=s.id, knob_hash=u.knob_hash,
                        sample_index=v.index, seed=v.seed)
                    comp_id = row.compression_id if row is not None else -1  # -1: not stored yet, so neither is this
                if pmid is not None and comp_id != -1:
                    found = store.find_prediction(cell_id=c.cell_id, sample_id=s.id, arm=c.arm, compression_id=comp_id)
                    if ok(found) and not (s.answer_type == "continuation" and found.error is None
                                          and store.count("scores", prediction_id=found.prediction_id) == 0):
                        continue
                n_todo += 1
                if u is not None and row is not None and row.error is not None and not retry_errors:
                    continue  # a failed compression: the sweep stores an error row, no request
                summary = "x" * (4 * rc.generation.compressor.max_new_tokens) if c.arm == "compressed" else None
                text, tmpl, key = arm_input(rc.prompts, c.arm, s, summary)
                p = _msg_tokens(arm_messages(tmpl, key, s, text))
                role = roles.setdefault("predictor", RoleCost())
                if s.answer_type == "continuation":
                    role.call(arch(pm), price(pm.model), p, _tokens(s.answers[0] if s.answers else ""), score=True)
                else:
                    role.call(arch(pm), price(pm.model), p, rc.generation.predictor.max_new_tokens)
                    jm = rc.models.judge
                    if jm is not None and s.meta.get("needs_judge"):  # the score stage's judge call (8 tokens)
                        answer = "x" * (4 * rc.generation.predictor.max_new_tokens)
                        jp = _msg_tokens(build_judge_messages(s.question, s.answers, answer))
                        roles.setdefault("judge", RoleCost()).call(arch(jm), price(jm.model), jp, 8)
            cells_out.append({"cell_id": c.cell_id, "task": rc.task.name, "arm": c.arm,
                              "compressor": u.compressor.model if u else None, "predictor": pm.model, "unit": c.unit,
                              "knobs": c.knobs, "samples": len(samples[c.task_key]), "predictions_todo": n_todo})
    finally:
        if store is not None:
            store.close()

    def total(attr: str) -> Any:
        vals = [getattr(r, attr) for r in roles.values()]
        if attr == "dollars":
            vals = [v for v in vals if v is not None]
            return sum(vals) if vals else None
        return None if any(v is None for v in vals) else sum(vals)

    return {
        "name": plan.name, "run_id": plan.run_id, "store": redact_url(cfg.output.store or ""),
        "store_exists": store is not None,
        "counted_as_done": "rows the results store holds (stored errors too, unless --retry-errors); requests the "
                           "response cache would answer are counted",
        "tokens": TOKEN_ESTIMATE,
        "cells": cells_out, "units": units_out, "mi": mi_out,
        "compressions": {"total": comp_total, "todo": comp_todo, "done": comp_total - comp_todo},
        "generate_requests": {**{r: c.generate_requests for r, c in roles.items() if c.generate_requests},
                              "total": total("generate_requests")},
        "score_requests": {**{r: c.score_requests for r, c in roles.items() if c.score_requests},
                           "total": total("score_requests")},
        "tokens_estimated": {r: {"prompt": c.prompt_tokens, "completion": c.completion_tokens}
                             for r, c in roles.items()},
        "flops": {**{r: c.flops for r, c in roles.items()}, "total": total("flops")},
        "dollars": {**{r: c.dollars for r, c in roles.items()}, "total": total("dollars")},
    }


def _num(x: Any) -> str:
    return "-" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def format_dry_run(d: dict[str, Any]) -> str:
    """The dry run as markdown tables: cells, units, MI estimates, and requests, FLOPs and dollars per role."""
    where = (f"store {d['store']}: what it holds is done, the counts are what remains" if d["store_exists"]
             else f"store {d['store'] or '-'} not created yet: everything is to do")
    lines = [f"# sweep {d['name']} (dry run, no model loaded): {len(d['cells'])} cells, {len(d['units'])} units; "
             f"{where}", "", "| cell | predictions to make / samples |", "|---|---|"]
    lines += [f"| {c['cell_id']} | {c['predictions_todo']} / {c['samples']} |" for c in d["cells"]]
    lines += ["", "| unit | compressor | task | seed | greedy | M | N | scorers | compressions to make / all |",
              "|---|---|---|---|---|---|---|---|---|"]
    for u in d["units"]:
        mi = u["mi"] or {}
        n = ("all" if mi.get("contexts_per_group") is None else mi["contexts_per_group"]) if mi else "-"
        lines.append(f"| {u['key'][:8]} | {u['compressor']['model']} | {u['task']} | {u['seed']} | "
                     f"{'yes' if u['greedy'] else 'no'} | {_num(mi.get('samples_per_context'))} | "
                     f"{n} | {','.join(mi.get('scorers', [])) or '-'} | "
                     f"{u['compressions_todo']} / {u['compressions']} |")
    if d["mi"]:
        lines += ["", "| MI of unit | scorer | groups | contexts | score requests |", "|---|---|---|---|---|"]
        lines += [f"| {m['unit'][:8]} | {m['scorer']} | {m['groups']} | {m['contexts']} | "
                  f"{'done' if m['done'] else m['score_requests']} |" for m in d["mi"]]
    lines += ["", "| role | generate requests | score requests | prompt tok (est.) | completion tok (est.) | FLOPs "
              "(est.) | dollars |", "|---|---|---|---|---|---|---|"]
    for role, tk in d["tokens_estimated"].items():
        lines.append(f"| {role} | {d['generate_requests'].get(role, 0)} | {d['score_requests'].get(role, 0)} | "
                     f"{tk['prompt']} | {tk['completion']} | {_num(d['flops'].get(role))} | "
                     f"{_num(d['dollars'].get(role))} |")
    lines.append(f"| total | {d['generate_requests']['total']} | {d['score_requests']['total']} | | | "
                 f"{_num(d['flops']['total'])} | {_num(d['dollars']['total'])} |")
    comp = d["compressions"]
    lines += ["", f"compressions: {comp['todo']} to make of {comp['total']} ({comp['done']} stored)",
              f"tokens: {d['tokens']}", "requests the response cache would answer are counted here (they would "
              "reach no model); dollars only for models with prices"]
    return "\n".join(lines) + "\n"
