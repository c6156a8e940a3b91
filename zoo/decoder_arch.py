"""The decoder architectures ``hf:<dir>`` builds for text generation, in one table: what differs per architecture
between GPT-2 and the Llama family (rotary positions, RMSNorm, grouped-query attention, SwiGLU), and nothing else.

Every architecture goes through the same code: zoo.gpt2's :class:`DecoderWithPast` (the flat KV cache, the 4D
additive mask built from the 2D one), export.decoder_export (one graph, dynamo exporter then TorchScript), the same
spec (:func:`decoder_dims` fills it), runtime.generate, verify and bench. transformers' own modules are exported as
they are, with ``attn_implementation="eager"`` (plain MatMul/Softmax, as for GPT-2); rotary embeddings are
computed in the graph from ``position_ids`` (no table input), and grouped-query attention keeps its KV heads in the
cache: ``past_key_values.<i>.key|value`` are (batch, kv_heads, past, head_dim), so ``spec.preprocess['heads']`` is
the number of KV heads (what sizes the cache everywhere: runtime.generate.DecoderInfo, bench's KV bytes) and
``preprocess['attention_heads']`` the query heads.

What is refused with a RegistryError naming the field: a ``model_type`` not in :data:`ARCHITECTURES`; a rotary
scaling whose frequencies depend on the sequence length at run time (``dynamic``, ``longrope``: the graph would
freeze the example's); a sliding window is handled by capping the position table at the window (every token then
sees its whole past, which is what the window allows too).

The model types themselves are also listed in pipeline.sources.DECODER_MODEL_TYPES (floor 2 reads a folder's task
from its config.json and cannot import zoo); tests/test_llama.py keeps the two equal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.built import RegistryError

MAX_POSITIONS = 2048  # the longest position table a spec declares (Llama configs say 4k..128k; engines need a max)
SEQUENCE_DEPENDENT_ROPE = ("dynamic", "longrope")  # rope types whose frequencies change with the sequence length


@dataclass(frozen=True)
class Arch:
    """One architecture: the transformers class that loads it (``AutoModelForCausalLM`` picks the same one), and
    what it is, for messages and the manifest."""

    lm_class: str
    family: str
    notes: str


ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch("GPT2LMHeadModel", "gpt2", "learned positions, LayerNorm, multi-head attention, GELU MLP"),
    "llama": Arch("LlamaForCausalLM", "llama", "rotary positions, RMSNorm, grouped-query attention, SwiGLU"),
    "mistral": Arch("MistralForCausalLM", "llama", "Llama's blocks; sliding-window attention (window caps positions)"),
    "qwen2": Arch("Qwen2ForCausalLM", "llama", "Llama's blocks with q/k/v biases; optional sliding window"),
}


@dataclass(frozen=True)
class DecoderDims:
    """The sizes a decoder spec and its cache need, read the same way from every architecture's config."""

    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    max_positions: int
    vocab_size: int


def arch_of(config: Any, name: str = "") -> Arch:
    """The table's entry for a transformers config (or its ``model_type`` string); RegistryError otherwise."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise RegistryError(f"model '{name}': model_type {model_type!r} is not a decoder the pipeline builds; expected "
                            f"one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def _rope_type(config: Any) -> str | None:
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5 / 4
        rp = getattr(config, key, None)
        if isinstance(rp, dict):
            found = rp.get("rope_type") or rp.get("type")
            if found:
                return str(found)
    return None


def decoder_dims(config: Any, name: str = "", cap: int = MAX_POSITIONS) -> DecoderDims:
    """A config's sizes through transformers' common attribute names (GPT2Config maps ``num_hidden_layers`` to
    ``n_layer`` and so on): KV heads = ``num_key_value_heads`` when set (grouped-query attention), else the
    attention heads; head_dim = ``head_dim`` when set, else hidden / heads; the position table capped at ``cap``
    and at the sliding window, if any. RegistryError for an unknown architecture or a sequence-dependent rope."""
    arch_of(config, name)
    rope = _rope_type(config)
    if rope in SEQUENCE_DEPENDENT_ROPE:
        raise RegistryError(f"model '{name}': rope type {rope!r} changes its frequencies with the sequence length, "
                            f"which one exported graph cannot follow; expected one of default, linear, llama3, yarn")
    heads = int(config.num_attention_heads)
    kv = getattr(config, "num_key_value_heads", None)
    kv = int(kv) if kv else heads
    hidden = int(config.hidden_size)
    head_dim = getattr(config, "head_dim", None)
    head_dim = int(head_dim) if head_dim else hidden // heads
    if heads % kv:
        raise RegistryError(f"model '{name}': {heads} attention heads over {kv} key/value heads; expected a multiple")
    n = min(int(config.max_position_embeddings), int(cap))
    window = getattr(config, "sliding_window", None)
    if window and (getattr(config, "use_sliding_window", True) is not False):
        n = min(n, int(window))
    return DecoderDims(layers=int(config.num_hidden_layers), attention_heads=heads, kv_heads=kv, head_dim=head_dim,
                       hidden=hidden, max_positions=n, vocab_size=int(config.vocab_size))


def config_summary(config: Any, attn_implementation: str) -> dict[str, Any]:
    """What the manifest records about a decoder's architecture."""
    d = decoder_dims(config)
    return {"model_type": config.model_type, "architecture": arch_of(config).lm_class, "layers": d.layers,
            "attention_heads": d.attention_heads, "kv_heads": d.kv_heads, "head_dim": d.head_dim, "hidden": d.hidden,
            "max_positions": d.max_positions, "vocab_size": d.vocab_size, "rope_type": _rope_type(config),
            "attn_implementation": attn_implementation}
