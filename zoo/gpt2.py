"""GPT-2 decoders for text generation, one architecture (Hugging Face ``GPT2LMHeadModel``) two ways:

- ``gpt2_imdb``: a small GPT-2 trained here (``python -m zoo.gpt2 --artifacts artifacts``): a byte-level BPE
  tokenizer fitted with ``tokenizers`` on the IMDB train split (zoo.data's seeded split; the validation and test
  reviews are never seen), then the model on the same split's token stream (reviews joined by ``<|endoftext|>``,
  random windows), stopped by a wall-clock budget (8 minutes for everything, progress bars), saved with
  ``save_pretrained`` (model + tokenizer) into ``<artifacts>/gpt2_imdb/hf/``. ``train.json`` gives the validation
  perplexity and, as the floor it must beat, the perplexity of a unigram model (train-split token frequencies,
  add-one smoothing) on the same validation tokens.
- ``llama_imdb``: the same recipe for a small ``LlamaForCausalLM`` (:class:`LlamaRecipe`: grouped-query attention,
  SwiGLU, tied head), ``python -m zoo.gpt2 --model llama_imdb``, into ``<artifacts>/llama_imdb/hf/``.
- ``hf:<dir>``: any local GPT-2 directory (config.json with ``model_type`` gpt2, weights, and ``tokenizer.json`` or
  ``vocab.json`` + ``merges.txt``), loaded with ``local_files_only=True``: never downloaded. The real ``gpt2``
  checkpoint works when a user has it. The same code builds the Llama family (``LlamaForCausalLM``,
  ``MistralForCausalLM``, ``Qwen2ForCausalLM``): zoo.decoder_arch's table says what differs per architecture (the
  class, how to read the sizes; grouped-query attention keeps its KV heads in the cache).

Either way the pipeline gets a :class:`BuiltModel` whose module is the decoder with its KV cache as plain tensors
(:func:`decoder_module`): inputs ``input_ids`` (B, S), ``attention_mask`` (B, P+S), ``position_ids`` (B, S) and
``past_key_values.<i>.key|value`` (B, H, P, D) per layer; outputs ``logits`` (B, S, V) and
``present.<i>.key|value`` (B, H, P+S, D). The padding/causal mask is built inside from the 2D mask with the finite
:data:`MASK_VALUE` (not -inf nor float32's min), so a fully padded query row stays finite in fp16 too. Its spec
(:func:`decoder_spec`) is task ``text_generation``; ``preprocess`` says everything a runtime needs (layer/head
sizes, cache names, eos/pad ids, the position table, TensorRT profiles for prefill and decode).

transformers, tokenizers and torch are imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pipeline.sources import source_of
from zoo.tasks.text_generation import NAME as TASK
from zoo.built import BuiltModel, RegistryError
from zoo.decoder_arch import arch_of, config_summary, decoder_dims
from zoo.hf import WEIGHT_FILES, check_dir  # noqa: F401 - WEIGHT_FILES: bench.generation imports it from here
from zoo.spec import DimRange, ModelSpec, TensorSpec

log = logging.getLogger("edgeattn.gpt2")

ALIASES = {"gpt2_imdb": "gpt2_imdb/hf", "llama_imdb": "llama_imdb/hf"}  # trained here: <artifacts>/<folder>
EOS = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
MASK_VALUE = -1e4  # added to masked attention scores: exp(-1e4) is 0 in fp32 and fp16, and it is finite in fp16
MAX_BATCH = 32
GPT2_TOKENIZERS = ((TOKENIZER_FILE,), ("vocab.json", "merges.txt"))


# ---- names and directories ---------------------------------------------------------------------------------------
def gpt2_dir(name: str, artifacts: str | os.PathLike = "artifacts") -> Path:
    if name in ALIASES:
        return Path(artifacts) / ALIASES[name]
    src = source_of(name)
    if src.kind != "hf" or not src.locator.strip():
        raise RegistryError(f"model '{name}': expected one of {sorted(ALIASES)} or 'hf:<directory>' (a decoder folder "
                            "written by save_pretrained)")
    return src.path


def train_hint(name: str, d: Path) -> str | None:
    """The command that makes ``d`` when ``name`` is trained here (for zoo.hf.check_dir's message)."""
    return f"python -m zoo.gpt2 --model {name} --artifacts {d.parent.parent}" if name in ALIASES else None


# ---- the exported module -----------------------------------------------------------------------------------------
def _decoder_class():
    import torch
    from torch import nn

    class DecoderWithPast(nn.Module):
        """An HF GPT-2 LM with its cache as flat tensors: ``(input_ids, attention_mask, position_ids, *past)`` ->
        ``(logits, *present)``; past/present ordered layer 0 key, layer 0 value, layer 1 key, ... An empty past
        (P = 0) is a prefill. The 4D additive mask (causal and padding) is made here from the 2D mask and handed to
        the model, which uses a 4D mask as it is."""

        def __init__(self, model, mask_value: float = MASK_VALUE):
            super().__init__()
            self.model = model
            self.layers = int(model.config.num_hidden_layers)
            self.mask_value = float(mask_value)

        def forward(self, input_ids, attention_mask, position_ids, *past):
            from transformers.cache_utils import DynamicCache

            s, total = input_ids.shape[1], attention_mask.shape[1]
            q = torch.arange(s, device=input_ids.device).unsqueeze(1) + (total - s)  # (S, 1) absolute query slots
            k = torch.arange(total, device=input_ids.device).unsqueeze(0)  # (1, P+S)
            keep = (k <= q).unsqueeze(0).unsqueeze(0) & attention_mask.bool().unsqueeze(1).unsqueeze(2)  # (B,1,S,P+S)
            mask = torch.zeros(keep.shape, dtype=torch.float32, device=input_ids.device)
            mask = mask.masked_fill(~keep, self.mask_value)
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(self.layers)])
            out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return DecoderWithPast


def decoder_module(model, mask_value: float = MASK_VALUE):
    """The pipeline's module around an HF causal LM of zoo.decoder_arch's table (see DecoderWithPast), eval mode."""
    return _decoder_class()(model, mask_value).eval()


def cache_names(layers: int) -> tuple[list[str], list[str]]:
    """(past input names, present output names), layer by layer, key then value (Optimum's names)."""
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def decoder_spec(name: str, config, batch_max: int = MAX_BATCH, dataset: str | None = None,
                 tokenizer_file: str = TOKENIZER_FILE) -> ModelSpec:
    """The spec of a decoder with cache (any architecture of zoo.decoder_arch). Dims: batch, sequence (new tokens),
    past (cached tokens) and total (past + sequence, the mask and the present). ``DimRange`` needs min >= 1, so
    ``dynamic['past']`` starts at 1 and ``preprocess['past_min'] = 0`` says the graph also takes an empty past (a
    prefill); ``preprocess['profiles']`` holds the two shape ranges an engine needs: prefill (past 0) and decode
    (sequence 1). ``preprocess['heads']`` is the cache's heads: the KV heads (fewer than ``attention_heads`` under
    grouped-query attention)."""
    dims = decoder_dims(config, name)
    layers, heads, head_dim = dims.layers, dims.kv_heads, dims.head_dim
    n = dims.max_positions
    vocab = dims.vocab_size
    eos = config.eos_token_id if config.eos_token_id is not None else vocab - 1
    eos = int(eos[0] if isinstance(eos, (list, tuple)) else eos)
    pad = int(config.pad_token_id) if getattr(config, "pad_token_id", None) is not None else eos
    bos = int(config.bos_token_id) if getattr(config, "bos_token_id", None) is not None else eos
    past_names, present_names = cache_names(layers)
    seq_opt, past_opt = min(32, n - 1), min(64, n - 1)
    batch_opt = 1
    inputs = [TensorSpec("input_ids", "int64", ("batch", "sequence")),
              TensorSpec("attention_mask", "int64", ("batch", "total")),
              TensorSpec("position_ids", "int64", ("batch", "sequence"))]
    inputs += [TensorSpec(p, "float32", ("batch", heads, "past", head_dim)) for p in past_names]
    outputs = [TensorSpec("logits", "float32", ("batch", "sequence", vocab))]
    outputs += [TensorSpec(p, "float32", ("batch", heads, "total", head_dim)) for p in present_names]
    profiles = {
        "prefill": {"batch": [1, batch_opt, batch_max], "sequence": [1, seq_opt, n], "past": [0, 0, 0]},
        "decode": {"batch": [1, batch_opt, batch_max], "sequence": [1, 1, 1], "past": [1, past_opt, n - 1]},
    }
    return ModelSpec(
        name=name, task=TASK, inputs=inputs, outputs=outputs,
        dynamic={"batch": DimRange(1, batch_opt, batch_max), "sequence": DimRange(1, seq_opt, n),
                 "past": DimRange(1, past_opt, n - 1), "total": DimRange(1, min(n, seq_opt + past_opt), n)},
        labels=[], dataset=dataset,
        preprocess={"kind": TASK, "tokenizer": tokenizer_file, "vocab_size": vocab, "eos_id": eos, "pad_id": pad,
                    "bos_id": bos, "max_positions": n, "layers": layers, "heads": heads, "head_dim": head_dim,
                    "attention_heads": dims.attention_heads, "model_type": str(config.model_type),
                    "past_inputs": past_names, "present_outputs": present_names, "past_min": 0,
                    "mask_value": MASK_VALUE, "profiles": profiles, "source": "huggingface"},
    )


# ---- loading -----------------------------------------------------------------------------------------------------
def load_lm(d: Path, name: str = "", attn_implementation: str = "eager"):
    """The HF causal LM of ``d`` (an architecture of zoo.decoder_arch's table: GPT-2, Llama, Mistral, Qwen2),
    float32, eval mode, never downloaded; RegistryError for another model_type."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
        arch = arch_of(config, name)
        model = getattr(transformers, arch.lm_class).from_pretrained(
            str(d), local_files_only=True, dtype=torch.float32, attn_implementation=attn_implementation)
    except RegistryError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds for an unusable folder
        raise RegistryError(f"model '{name}': cannot load a causal LM from '{d}' ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
    return model.eval()


def load_gpt2(name: str, directory: str | os.PathLike | None = None, artifacts: str | os.PathLike = "artifacts",
              batch_max: int = MAX_BATCH, attn_implementation: str = "eager", dataset: str | None = None) -> BuiltModel:
    """``gpt2_imdb`` or ``hf:<decoder dir>`` (GPT-2 or the Llama family, zoo.decoder_arch; ``directory``
    overrides) -> BuiltModel: the decoder with cache, its spec."""
    d = Path(directory) if directory else gpt2_dir(name, artifacts)
    check_dir(d, name, GPT2_TOKENIZERS, train_hint(name, d))
    model = load_lm(d, name, attn_implementation)
    c = model.config
    from zoo.hf import DATASET_KEY

    dataset = dataset if dataset is not None else getattr(c, DATASET_KEY, None)
    spec = decoder_spec(name, c, batch_max=batch_max, dataset=dataset)
    cfg = {"hf_dir": str(d.resolve()), **config_summary(c, attn_implementation), "dataset": dataset,
           "transformers": _transformers_version()}
    if c.model_type == "gpt2":  # the names GPT-2 manifests always had
        cfg.update(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.n_positions)
    return BuiltModel(name, decoder_module(model), spec, cfg)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def tokenizer_json(d: Path, name: str = "") -> str:
    """The directory's tokenizer as one ``tokenizers`` JSON (no truncation, no padding): tokenizer.json as it is,
    else the fast tokenizer transformers builds from vocab.json + merges.txt."""
    from tokenizers import Tokenizer

    if (d / TOKENIZER_FILE).is_file():
        tok = Tokenizer.from_file(str(d / TOKENIZER_FILE))
    else:
        from transformers import AutoTokenizer

        try:
            fast = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            raise RegistryError(f"model '{name}': cannot load the tokenizer in '{d}' ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:300] if str(e) else ''})") from e
        tok = Tokenizer.from_str(fast.backend_tokenizer.to_str())
    tok.no_padding()
    tok.no_truncation()
    return tok.to_str(pretty=True)


def write_tokenizer(d: Path, out: Path, name: str = "") -> Path:
    """:func:`tokenizer_json` into ``out`` atomically (untouched when the content is the same)."""
    from zoo.io import atomic_write_text

    text = tokenizer_json(d, name)
    if out.is_file() and out.read_text(encoding="utf-8") == text:
        return out
    return atomic_write_text(out, text)


def _ref_dir(ref) -> Path:
    """The GPT-2 directory of a ModelRef, refused when the artifact folder is (or lies inside) it: the stages would
    write their files into the model's own folder."""
    d = gpt2_dir(ref.name, ref.artifacts)
    check_dir(d, ref.name, GPT2_TOKENIZERS, train_hint(ref.name, d))
    folder, src = ref.folder.resolve(), d.resolve()
    if folder == src or src in folder.parents:
        raise RegistryError(f"model '{ref.name}': its artifact folder '{ref.folder}' is its own directory '{d}'; keep "
                            "the model outside the artifacts folder (or under another name)")
    return d


def load_for_export(ref, weights=None) -> BuiltModel:
    """What the export stage and verify load (zoo.registry.load_for_export): the decoder, and the directory's
    tokenizer written into the artifact folder as tokenizer.json (what runtime.bpe reads on a device)."""
    if weights:
        raise RegistryError(f"model '{ref.name}': a GPT-2 directory holds its own weights; --weights does not apply "
                            "(save_pretrained the weights you want there)")
    d = _ref_dir(ref)
    built = load_gpt2(ref.name, directory=d)
    write_tokenizer(d, ref.file(built.spec.preprocess["tokenizer"]), ref.name)
    return built


def export_source(ref) -> str:
    """What an export is made from (the up-to-date check): the directory's files and this module's source."""
    from zoo.hf import dir_digest

    return f"gpt2 {dir_digest(_ref_dir(ref))}"


# ---- training gpt2_imdb ------------------------------------------------------------------------------------------
@dataclass
class GPT2Recipe:
    """gpt2_imdb's recipe. ``budget_seconds`` bounds the whole run (tokenizer, encoding, training, evaluation,
    saving); the learning-rate schedule follows max(step / max_steps, elapsed / training budget), so a slow CPU
    ends the same cosine schedule early instead of being cut mid-way.

    Measured (AMD EPYC, 2 cores shared with another developer's test runs, so slower than a free machine): 467 s in
    all, 496 steps of 16 x 128 tokens (1.0M tokens, 439 s), validation perplexity 289.9 against the unigram floor
    893.7 (65,536 validation tokens; 4,096-token BPE fitted in 6 s)."""

    arch: ClassVar[str] = "gpt2"  # zoo.decoder_arch's model_type (a ClassVar: not in the recipe's config hash)
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256
    block_size: int = 128
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 30
    max_steps: int = 3000
    budget_seconds: float = 480.0
    eval_reserve_seconds: float = 30.0  # kept for the evaluation and saving at the end
    eval_tokens: int | None = 65_536  # validation tokens scored (None: the whole split)
    dropout: float = 0.0
    tokenizer_docs: int | None = None  # reviews the BPE is fitted on (train split, first N of its seeded order)
    max_train_docs: int | None = None  # quick runs (tests)
    seed: int = 0
    dataset: str = "imdb"


RECIPE = GPT2Recipe()
# `make demo`'s share of a 30-minute budget: a 2-layer, 128-wide GPT-2 (same tokenizer size and position table) for
# 90 s, the BPE fitted on 4,000 reviews and the token stream from 8,000 (more than 90 s of training reads), 16k
# validation tokens. It is there to take a decoder through every stage, not to write reviews: `make gpt2` trains
# RECIPE, and a model trained with RECIPE is reused by a demo (train_gpt2's ``accept``).
DEMO_RECIPE = GPT2Recipe(n_layer=2, n_embd=128, n_head=2, lr=3e-3, warmup_steps=20, budget_seconds=90.0,
                         eval_reserve_seconds=10.0, eval_tokens=16_384, tokenizer_docs=4000, max_train_docs=8000)
RECIPES = {"full": RECIPE, "demo": DEMO_RECIPE}


@dataclass
class LlamaRecipe(GPT2Recipe):
    """llama_imdb's recipe: a ``LlamaForCausalLM`` (rotary positions, RMSNorm, grouped-query attention, SwiGLU) on
    gpt2_imdb's data, tokenizer and schedule. ``n_embd`` is the hidden size, ``n_head`` the query heads,
    ``n_positions`` the position table; the embeddings are tied to the LM head as in GPT-2."""

    arch: ClassVar[str] = "llama"
    kv_heads: int = 2
    intermediate: int = 688  # SwiGLU width: about 8/3 x hidden, a multiple of 16
    rope_theta: float = 10000.0


LLAMA_RECIPE = LlamaRecipe()  # 4 layers, hidden 256, 4 query heads over 2 KV heads, gpt2_imdb's 8-minute budget
LLAMA_DEMO_RECIPE = LlamaRecipe(n_layer=2, n_embd=128, n_head=4, kv_heads=2, intermediate=352, lr=3e-3,
                                warmup_steps=20, budget_seconds=90.0, eval_reserve_seconds=10.0, eval_tokens=16_384,
                                tokenizer_docs=4000, max_train_docs=8000)
LLAMA_RECIPES = {"full": LLAMA_RECIPE, "demo": LLAMA_DEMO_RECIPE}


def train_bpe_tokenizer(texts, vocab_size: int):
    """A GPT-2 style byte-level BPE (``tokenizers``) fitted on ``texts``: all 256 byte symbols, ``<|endoftext|>`` id
    0, no prefix space, ByteLevel decoder. Returns a transformers ``GPT2TokenizerFast`` (eos = bos = unk = pad =
    ``<|endoftext|>``) for save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(list(texts), trainers.BpeTrainer(
        vocab_size=int(vocab_size), special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False))
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
                             model_max_length=1_000_000)


def token_stream(tok, texts, eos_id: int) -> np.ndarray:
    """Reviews -> one int32 stream, each review preceded by ``<|endoftext|>`` (GPT-2's document separator)."""
    encs = tok.backend_tokenizer.encode_batch(list(texts))
    parts = []
    for e in encs:
        parts.append(np.asarray([eos_id] + e.ids, dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def eval_windows(stream: np.ndarray, block: int, max_tokens: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (inputs, targets) windows of ``block`` tokens over ``stream`` (targets shifted by one)."""
    n = (len(stream) - 1) // block
    if max_tokens:
        n = min(n, max(1, max_tokens // block))
    x = stream[: n * block].reshape(n, block)
    y = stream[1: n * block + 1].reshape(n, block)
    return x.astype(np.int64), y.astype(np.int64)


def unigram_perplexity(train: np.ndarray, targets: np.ndarray, vocab: int) -> float:
    """Perplexity of the unigram model (train-stream token frequencies, add-one smoothing) on ``targets``."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[targets.ravel()].mean()))


def lm_perplexity(model, x: np.ndarray, y: np.ndarray, batch: int = 32) -> float:
    import torch

    model.eval()
    nll, n = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb, yb = torch.from_numpy(x[i:i + batch]), torch.from_numpy(y[i:i + batch])
            logits = model(input_ids=xb, attention_mask=torch.ones_like(xb)).logits
            nll += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                                           reduction="sum"))
            n += yb.numel()
    return math.exp(nll / max(1, n))


def gpt2_config(recipe: GPT2Recipe, vocab: int, eos_id: int, dataset: str | None):
    from transformers import GPT2Config

    from zoo.hf import DATASET_KEY

    return GPT2Config(vocab_size=int(vocab), n_positions=recipe.n_positions, n_embd=recipe.n_embd,
                      n_layer=recipe.n_layer, n_head=recipe.n_head, resid_pdrop=recipe.dropout,
                      embd_pdrop=recipe.dropout, attn_pdrop=recipe.dropout, bos_token_id=eos_id, eos_token_id=eos_id,
                      pad_token_id=eos_id, **{DATASET_KEY: dataset})


def lm_config(recipe: GPT2Recipe, vocab: int, eos_id: int, dataset: str | None):
    """The transformers config a recipe trains: GPT-2's (:func:`gpt2_config`), or a Llama's for a LlamaRecipe."""
    if recipe.arch == "gpt2":
        return gpt2_config(recipe, vocab, eos_id, dataset)
    from transformers import LlamaConfig

    from zoo.hf import DATASET_KEY

    return LlamaConfig(vocab_size=int(vocab), hidden_size=recipe.n_embd, intermediate_size=recipe.intermediate,
                       num_hidden_layers=recipe.n_layer, num_attention_heads=recipe.n_head,
                       num_key_value_heads=recipe.kv_heads, max_position_embeddings=recipe.n_positions,
                       rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
                       attention_dropout=recipe.dropout, tie_word_embeddings=True, bos_token_id=eos_id,
                       eos_token_id=eos_id, pad_token_id=eos_id, **{DATASET_KEY: dataset})


def _lr_at(recipe: GPT2Recipe, step: int, progress: float) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    floor = recipe.lr * recipe.min_lr_frac
    return floor + 0.5 * (recipe.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def fit_lm(model, stream: np.ndarray, recipe: GPT2Recipe, deadline: float, progress: bool = True) -> dict[str, Any]:
    """Train on random windows of ``stream`` until ``max_steps`` or ``deadline`` (time.perf_counter()), whichever
    comes first; AdamW (no decay on biases, norms, embeddings), warm-up then cosine on the combined progress,
    gradient clipping at 1.0; a tqdm bar with the running loss."""
    import torch
    from tqdm import tqdm

    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or any(k in n_ for k in ("wte", "wpe", "embed_tokens")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(recipe.seed)
    t0 = time.perf_counter()
    budget = max(1.0, deadline - t0)
    bar = tqdm(total=recipe.max_steps, desc=f"{recipe.arch} train", disable=not progress, dynamic_ncols=True)
    run_loss, step, history = 0.0, 0, []
    model.train()
    while step < recipe.max_steps:
        elapsed = time.perf_counter() - t0
        frac = max(step / recipe.max_steps, elapsed / budget)
        if frac >= 1.0:
            break
        lr = _lr_at(recipe, step, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, len(stream) - recipe.block_size - 1, size=recipe.batch_size)
        idx = starts[:, None] + np.arange(recipe.block_size + 1)[None, :]
        win = torch.from_numpy(stream[idx].astype(np.int64))
        x = win[:, :-1]
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), win[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = float(loss.item())
        run_loss = 0.98 * run_loss + 0.02 * lv if step else lv
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{run_loss:.3f}", lr=f"{lr:.2e}", left=f"{max(0.0, deadline - time.perf_counter()):.0f}s")
        if step % 100 == 0:
            history.append({"step": step, "train_loss": round(run_loss, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
    bar.close()
    model.eval()
    seconds = time.perf_counter() - t0
    return {"steps": step, "train_loss": round(run_loss, 4), "train_seconds": round(seconds, 1),
            "tokens_seen": int(step * recipe.batch_size * recipe.block_size),
            "stopped_by": "max_steps" if step >= recipe.max_steps else "time budget", "history": history}


def train_gpt2(artifacts: str | os.PathLike = "artifacts", recipe: GPT2Recipe | None = None, force: bool = False,
               progress: bool = True, name: str = "gpt2_imdb", accept: tuple[GPT2Recipe, ...] = ()) -> dict[str, Any]:
    """Train ``gpt2_imdb`` (or ``llama_imdb``: the recipe's ``arch``; see the module docstring) into
    ``<artifacts>/<name>/hf`` and write ``train.json``;
    reused when train.json matches this recipe, or one of ``accept`` (e.g. the full recipe when the demo's is
    asked), and the data."""
    import torch
    import transformers

    from zoo.data import load_dataset
    from zoo.io import atomic_write_json, publish_dir, read_json
    from zoo.repro import config_hash, seed_everything

    recipe = recipe or RECIPE
    t_start = time.perf_counter()
    deadline = t_start + recipe.budget_seconds
    model_dir = Path(artifacts) / name
    out = model_dir / "hf"
    ds = load_dataset(recipe.dataset)
    key = config_hash(name, recipe, ds.sha256)
    keys = [key] + [config_hash(name, r, ds.sha256) for r in accept]
    prev = read_json(model_dir / "train.json")
    if not force and prev and prev.get("config_hash") in keys and (out / "config.json").is_file():
        log.info("%s: up to date (train.json config_hash %s), reusing %s", name, prev["config_hash"], out)
        return prev
    seed_everything(recipe.seed)
    train_texts = list(ds.train.x[: recipe.max_train_docs] if recipe.max_train_docs else ds.train.x)
    tok = train_bpe_tokenizer(train_texts[: recipe.tokenizer_docs] if recipe.tokenizer_docs else train_texts,
                              recipe.vocab_size)
    eos_id = int(tok.convert_tokens_to_ids(EOS))
    tokenizer_seconds = time.perf_counter() - t_start
    train_stream = token_stream(tok, train_texts, eos_id)
    xv, yv = eval_windows(token_stream(tok, ds.val.x, eos_id), recipe.block_size, recipe.eval_tokens)
    encode_seconds = time.perf_counter() - t_start - tokenizer_seconds
    log.info("%s: tokenizer %d tokens (%.1f s); train stream %d tokens, %d validation windows (%.1f s)", name,
             len(tok), tokenizer_seconds, len(train_stream), len(xv), encode_seconds)

    seed_everything(recipe.seed)
    cfg = lm_config(recipe, len(tok), eos_id, recipe.dataset)
    lm_class = arch_of(recipe.arch, name).lm_class
    model = getattr(transformers, lm_class)._from_config(cfg, attn_implementation="sdpa")
    fit = fit_lm(model, train_stream, recipe, deadline - recipe.eval_reserve_seconds, progress)
    t_eval = time.perf_counter()
    val_ppl = lm_perplexity(model, xv, yv)
    floor = unigram_perplexity(train_stream, yv, len(tok))
    eval_seconds = time.perf_counter() - t_eval

    stage = model_dir / "hf.tmp"
    shutil.rmtree(stage, ignore_errors=True)
    model.config._attn_implementation = "eager"  # what the pipeline loads it with (plain MatMul/Softmax)
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(str(stage))
    tok.save_pretrained(str(stage))
    publish_dir(stage, out)
    result = {
        "model": name, "val_perplexity": round(val_ppl, 3), "unigram_perplexity": round(floor, 3),
        "beats_unigram_floor": bool(val_ppl < floor), "n_val_tokens": int(yv.size), "n_val_windows": int(len(xv)),
        "n_train_docs": len(train_texts), "n_train_tokens": int(len(train_stream)),
        **{k: fit[k] for k in ("steps", "tokens_seen", "train_loss", "train_seconds", "stopped_by")},
        "tokenizer_seconds": round(tokenizer_seconds, 1), "encode_seconds": round(encode_seconds, 1),
        "eval_seconds": round(eval_seconds, 1), "total_seconds": round(time.perf_counter() - t_start, 1),
        "budget_seconds": recipe.budget_seconds,
        "dataset": {**ds.describe(), "n_train": len(train_texts)},
        "config": {"architecture": lm_class, "vocab_size": len(tok), "n_layer": recipe.n_layer,
                   "n_embd": recipe.n_embd, "n_head": recipe.n_head, "n_positions": recipe.n_positions,
                   "kv_heads": getattr(recipe, "kv_heads", recipe.n_head),
                   "parameters": sum(p.numel() for p in model.parameters()), "eos_id": eos_id},
        "recipe": dataclasses.asdict(recipe), "config_hash": key, "history": fit["history"],
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "checkpoint": f"{out.name}/",
    }
    atomic_write_json(model_dir / "train.json", result)
    return result


def recipe_for(which: str = "full", budget: float | None = None, max_steps: int | None = None,
               model: str = "gpt2_imdb") -> tuple[GPT2Recipe, tuple[GPT2Recipe, ...]]:
    """(the recipe to train, the recipes whose model is reused instead): ``which`` of the model's recipes (RECIPES,
    LLAMA_RECIPES for llama_imdb), its budget and step cap replaced when given; a demo run reuses a model of the full
    recipe."""
    table, full = (LLAMA_RECIPES, LLAMA_RECIPES["full"]) if model == "llama_imdb" else (RECIPES, RECIPE)
    if which not in table:
        raise RegistryError(f"{model} recipe: got {which!r}, expected one of {sorted(table)}")
    recipe = table[which]
    if budget:
        recipe = dataclasses.replace(recipe, budget_seconds=float(budget))
    if max_steps:
        recipe = dataclasses.replace(recipe, max_steps=int(max_steps))
    return recipe, ((full,) if which == "demo" else ())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train gpt2_imdb or llama_imdb (byte-level BPE + a small GPT-2 or Llama "
                                 "on the IMDB train split) into <artifacts>/<model>/hf with train.json beside it.")
    ap.add_argument("--model", choices=sorted(ALIASES), default="gpt2_imdb")
    ap.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    ap.add_argument("--force", action="store_true", help="retrain even if train.json is up to date")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="full",
                    help="full (make gpt2) or demo (make demo's short one; a full model is reused)")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds for everything (default {RECIPE.budget_seconds:g}; demo "
                         f"{DEMO_RECIPE.budget_seconds:g})")
    ap.add_argument("--max-steps", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(int(os.environ.get("EDGEATTN_THREADS", os.cpu_count() or 1)))
    recipe, accept = recipe_for(args.recipe, args.budget, args.max_steps, args.model)
    r = train_gpt2(args.artifacts, recipe, force=args.force, name=args.model, accept=accept)
    print(summary_line(r))
    return 0


def train_stage(ref, args) -> dict[str, Any]:
    """The train handler of text generation (zoo.tasks): ``--gpt2-recipe`` and ``--budget`` pick the recipe."""
    recipe, accept = recipe_for(args.gpt2_recipe, args.budget, model=ref.name)
    return train_gpt2(ref.artifacts, recipe, force=args.force, name=ref.name, accept=accept)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    return [summary_line(r) for r in rows]


def summary_line(r: dict[str, Any]) -> str:
    """One line for a train.json of this module."""
    return (f"{r['model']}: validation perplexity {r['val_perplexity']:.2f} (unigram floor "
            f"{r['unigram_perplexity']:.2f}), {r['steps']} steps ({r['stopped_by']}), {r['total_seconds']:.0f} s "
            "in all")

if __name__ == "__main__":
    from pipeline.stage import cli

    raise SystemExit(cli("train", main))
