"""A decoder's evaluation data and its run on ONNX Runtime, for the quantize stage's decoder loop and verify alike:
``text_windows`` (windows of a dataset split as an EvalSet of input_ids and next-token labels), ``prefill_feed``
(whole windows as one prefill), ``ort_teacher_forced`` (a decoder graph over the windows, scored as
judge.teacher_forced.TeacherForced) and ``ort_teacher_forced_cached`` (the same, each window's second half read through
the cache its first half wrote: judges a narrowed cache)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from judge.teacher_forced import TeacherForced, teacher_forced_run
from runtime.errors import InputError

TF_TOKENS = 16_384  # teacher-forced tokens verify and the quantize stage judge on (128 windows of 128)


def text_windows(tokenizer_file: str | Path, split: str = "test", max_tokens: int = TF_TOKENS, block: int = 128,
                 dataset: str = "imdb", eos_id: int | None = None):
    """Non-overlapping windows of ``block`` tokens over the ``split`` reviews (each preceded by the end-of-text
    token, as the model was trained: zoo.gpt2.token_stream / eval_windows), at most ``max_tokens`` tokens, as an
    EvalSet of ``input_ids`` (N, block) and ``labels`` (N, block): the next token of every position. The separator
    is ``eos_id`` (the spec's ``preprocess.eos_id``: a Llama/Mistral tokenizer has ``</s>``, not GPT-2's
    ``<|endoftext|>``), else the tokenizer's ``<|endoftext|>``."""
    from types import SimpleNamespace

    from tokenizers import Tokenizer

    from calibration.evalset import EvalSet
    from zoo.data import load_dataset
    from zoo.gpt2 import EOS, eval_windows, token_stream

    if block < 2 or max_tokens < block:
        raise InputError(f"text windows: got block {block}, max_tokens {max_tokens}; expected block >= 2 and "
                         "max_tokens >= block")
    tok = Tokenizer.from_file(str(tokenizer_file))
    eos = int(eos_id) if eos_id is not None else tok.token_to_id(EOS)
    if eos is None:
        raise InputError(f"tokenizer '{tokenizer_file}': has no '{EOS}' token and no eos_id was given; expected a "
                         "GPT-2 byte-level BPE or the spec's preprocess.eos_id")
    texts = list(getattr(load_dataset(dataset), split).x)
    shim = SimpleNamespace(backend_tokenizer=tok)  # token_stream reads a transformers tokenizer's backend
    parts, have, i = [], 0, 0
    while have <= max_tokens and i < len(texts):  # encode only the reviews needed
        parts.append(token_stream(shim, texts[i:i + 64], eos))
        have += len(parts[-1])
        i += 64
    x, y = eval_windows(np.concatenate(parts), block, max_tokens)
    return EvalSet({"input_ids": x, "labels": y}, None, None,
                   f"{dataset} {split}: {x.shape[0]} windows of {block} tokens ({x.size} tokens, {i} reviews read)")


def prefill_feed(info, input_ids: np.ndarray, cache_dtype=np.float32) -> dict[str, np.ndarray]:
    """Whole windows as one prefill: no padding, positions 0..T-1, an empty past (B, H, 0, D) per cache input."""
    b, t = input_ids.shape
    feed = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ones((b, t), np.int64),
            "position_ids": np.ascontiguousarray(np.broadcast_to(np.arange(t, dtype=np.int64), (b, t)))}
    for name in info.past_inputs:
        feed[name] = np.zeros(info.cache_shape(b, 0), cache_dtype)
    return feed


def ort_teacher_forced(model: str | Path, windows, level: str = "all", threads: int | None = None,
                       batch_size: int = 8, spec: dict[str, Any] | None = None,
                       progress: str | None = None) -> TeacherForced:
    """A decoder graph on ONNX Runtime CPU at ``level``, every window as one prefill (the cache inputs in the
    graph's own type: float32, or float16 for an fp16 graph that narrowed its cache)."""
    from runtime.generate import DecoderInfo
    from runtime.modelspec import read_spec
    from runtime.ort_backend import ORT_TYPES, cpu_session

    sess = cpu_session(model, level, threads)
    info = DecoderInfo.from_spec(spec or read_spec(Path(model), dict(sess.get_modelmeta().custom_metadata_map)),
                                 str(model))
    types = {a.name: ORT_TYPES.get(a.type, "float32") for a in sess.get_inputs()}
    cache = np.dtype(types.get(info.past_inputs[0], "float32")) if info.past_inputs else np.float32
    return teacher_forced_run(lambda x: sess.run(["logits"], prefill_feed(info, x, cache))[0], windows, batch_size,
                              progress)


def ort_teacher_forced_cached(model: str | Path, windows, level: str = "all", threads: int | None = None,
                              batch_size: int = 8, spec: dict[str, Any] | None = None,
                              progress: str | None = None) -> TeacherForced:
    """:func:`ort_teacher_forced`, but each window in two steps: a prefill of its first half, then the second half as
    one step on the cache that prefill returned, fed back in the graph's own cache type. The second half's logits read
    the cache as a decode step does, so a cache narrowed to float16 (optimize.kv_cache) shows its rounding in the
    figures; with a float32 cache they equal the one-prefill figures up to float rounding."""
    from runtime.generate import DecoderInfo
    from runtime.modelspec import read_spec
    from runtime.ort_backend import ORT_TYPES, cpu_session

    sess = cpu_session(model, level, threads)
    info = DecoderInfo.from_spec(spec or read_spec(Path(model), dict(sess.get_modelmeta().custom_metadata_map)),
                                 str(model))
    types = {a.name: ORT_TYPES.get(a.type, "float32") for a in sess.get_inputs()}
    cache = np.dtype(types.get(info.past_inputs[0], "float32")) if info.past_inputs else np.float32
    names = ["logits", *info.present_outputs]

    def run(x: np.ndarray) -> np.ndarray:
        b, t = x.shape
        s = max(1, t // 2)
        first = sess.run(names, prefill_feed(info, x[:, :s], cache))
        step = {"input_ids": np.ascontiguousarray(x[:, s:], dtype=np.int64), "attention_mask": np.ones((b, t), np.int64),
                "position_ids": np.ascontiguousarray(np.broadcast_to(np.arange(s, t, dtype=np.int64), (b, t - s)))}
        step.update(zip(info.past_inputs, first[1:]))
        return np.concatenate([first[0], sess.run(["logits"], step)[0]], axis=1)  # (B, T, V)

    return teacher_forced_run(run, windows, batch_size, progress)
