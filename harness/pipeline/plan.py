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
from dataclasses import dataclass, field
from typing import Any

from harness.config import ModelConfig, RunConfig, TaskConfig, parse_config
from harness.errors import UserError
from harness.pipeline.stages import params_from
from harness.records import GenParams
from harness.store.redact import redact_url
from harness.store.store import knob_hash

#: the store's `sample_index` of the greedy compression; sampled MI compressions are j = 0..M-1
GREEDY_INDEX = -1

#: ModelConfig fields that change how calls are made, never what a model answers: kept out of every key
TRANSPORT_FIELDS = ("device", "batch_size", "max_concurrency", "max_retries", "timeout_s", "api_key_env",
                    "trust_remote_code")


# ---------------------------------------------------------------------------- model and compression keys


def model_key_fields(mc: ModelConfig) -> dict[str, Any]:
    """The part of a model config that decides its outputs: the one source of every key derived from a model
    (cell hash, compression unit, the sweep's model and backend maps).

    Transport and execution settings (TRANSPORT_FIELDS: timeouts, retries, concurrency, batch size, device, which
    environment variable holds the key, the remote-code permission) are reset to their defaults rather than
    dropped, so the ids of configs that never set them stay as they were. `base_url` stays, with its credentials
    hidden (`redact_url`): it names which server, and so which weights, answers, as in the backend identity; a
    rotated key or password keeps every id.
    """
    d = mc.model_dump(mode="json")
    for f in TRANSPORT_FIELDS:
        d[f] = ModelConfig.model_fields[f].default
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


def read_variant(cfg: RunConfig, sample_id: str) -> Variant:
    """The compression of `sample_id` that the compressed arm's predictor reads."""
    if reads_sampled(cfg):
        return Variant("sample", 0, sampling_params(cfg, sample_id, 0))
    return Variant("greedy", GREEDY_INDEX, params_from(cfg.generation.compressor, cfg.seed))


def draws_per_context(cfg: RunConfig) -> int:
    """M, the sampled compressions per context for MI: `mi.samples_per_context`, but 1 for a sampling-free
    compressor (`python/`), whose draws would all be the same text (see harness.compressors.python)."""
    assert cfg.mi is not None
    mc = cfg.models.compressor
    return 1 if mc is not None and mc.backend == "python" else cfg.mi.samples_per_context


def compression_variants(cfg: RunConfig, sample_id: str) -> list[Variant]:
    """Every compression a config makes of one sample: the greedy one when the compressed arm reads it, and the
    M sampled ones for MI."""
    out: list[Variant] = []
    if "compressed" in cfg.arms and not reads_sampled(cfg):
        out.append(read_variant(cfg, sample_id))
    if cfg.mi is not None:
        out += [Variant("sample", j, sampling_params(cfg, sample_id, j)) for j in range(draws_per_context(cfg))]
    return out


# ---------------------------------------------------------------------------- units, cells, plan


def _short(spec: str) -> str:
    return spec.partition("/")[2].replace("/", "_") or spec


@dataclass
class CompressUnit:
    """All compressions one compressor makes for one task under one compressor-side knob setting."""

    key: str
    cfg: RunConfig  # an expanded config with this compressor and these knobs
    task_key: str
    knob_hash: str

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
    keep["models"].pop("scorer", None)
    keep["models"].pop("judge", None)
    if arm != "compressed":
        keep["models"].pop("compressor", None)
        keep["prompts"].pop("compressor", None)
        keep["generation"].pop("compressor", None)
        keep.pop("mi", None)
    keep["arm"] = arm
    return knob_hash(keep)


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
        task_key = knob_hash(rc.task.model_dump(mode="json"))
        plan.tasks.setdefault(task_key, rc.task)
        unit_key = None
        needs_compression = "compressed" in rc.arms or rc.mi is not None
        if needs_compression:
            kh = compression_knob_hash(rc)
            assert rc.models.compressor is not None
            unit_key = knob_hash({"compressor": model_key_fields(rc.models.compressor), "knobs": kh,
                                  "seed": rc.seed})  # the seed is a column of the compression key, not in kh
            plan.units.setdefault(unit_key, CompressUnit(unit_key, rc, task_key, kh))
        for arm in rc.arms:
            h = _cell_hash(rc, arm)
            comp_name = _short(rc.models.compressor.model) if arm == "compressed" and rc.models.compressor else "-"
            cid = f"{cfg.name}/{rc.task.name}/{arm}/{comp_name}/{_short(rc.models.predictor.model)}/{h[:8]}"
            if cid not in plan.cells:
                plan.cells[cid] = Cell(cid, rc, arm, task_key, unit_key if arm == "compressed" else None, setting)
    return plan
