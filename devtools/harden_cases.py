"""The hardening suite's subjects and bad inputs: two tiny user models (a text classifier with its tokenizer, an
image classifier), feed mutations drawn by hypothesis, junk texts and image files, and the fuzz loop that runs in a
child process (a backend that dies takes only that child with it). Used by ``devtools.harden``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.errors import EdgeattnError

VOCAB = 200
MODULE_NAME = "harden_models"
MODELS = (f"{MODULE_NAME}:tiny_text", f"{MODULE_NAME}:tiny_image")
MODULE_SOURCE = f'''"""Two tiny models for the hardening suite (written by devtools.harden)."""
import os

import torch
from torch import nn

from zoo.registry import model_spec

VERSION = int(os.environ.get("HARDEN_MODEL_VERSION", "1"))  # a changed source: the faults check nothing stale is kept


class TinyText(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding({VOCAB}, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, input_ids):
        x = self.emb(input_ids)
        x, _ = self.attn(x, x, x, need_weights=False)
        return self.head(x.mean(1))


@model_spec(inputs=[{{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}}],
            outputs=[{{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}}],
            dynamic={{"batch": {{"min": 1, "opt": 4, "max": 16}}, "sequence": {{"min": 1, "opt": 16, "max": 32}}}},
            labels=["negative", "positive"],
            preprocess={{"kind": "text", "tokenizer": "tokenizer.json", "vocab_size": {VOCAB}, "max_len": 32,
                        "pad_id": 0, "cls_id": 2, "first_real_id": 4}})
def tiny_text():
    torch.manual_seed(VERSION)
    return TinyText()


@model_spec(inputs=[{{"name": "pixels", "dtype": "float32", "shape": ["batch", 1, 16, 16]}}],
            outputs=[{{"name": "logits", "dtype": "float32", "shape": ["batch", 4]}}],
            dynamic={{"batch": {{"min": 1, "opt": 4, "max": 16}}}},
            labels=["a", "b", "c", "d"],
            preprocess={{"kind": "image", "size": [16, 16], "channels": 1, "mean": 0.5, "std": 0.25}})
def tiny_image():
    torch.manual_seed(VERSION)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
'''

FEED_KINDS = ("valid", "unknown_name", "missing_input", "wrong_dtype", "wrong_rank", "out_of_profile", "empty_batch",
              "nan_inf", "non_contiguous", "big_endian", "ids_out_of_vocab", "not_an_array", "huge_values")


def write_subjects(work: Path) -> Path:
    """The models' module in ``work/mods`` and a WordPiece tokenizer (IMDB train reviews) for the text model."""
    from zoo.data import load_dataset
    from zoo.tokenizer import train_tokenizer

    mods = work / "mods"
    mods.mkdir(parents=True, exist_ok=True)
    (mods / f"{MODULE_NAME}.py").write_text(MODULE_SOURCE)
    texts = list(load_dataset("imdb").train.x[:400])
    train_tokenizer(texts, VOCAB, 32, work / "tokenizer.json")
    return mods


# ---- feeds --------------------------------------------------------------------------------------------------
def mutate(kind: str, contract, rng: np.random.Generator, name_text: str) -> tuple[Any, bool]:
    """(a feed of ``kind`` for a runner's input ``contract``, whether the runtime must accept it)."""
    feed: dict[str, Any] = {}
    for info in contract.inputs:
        shape = []
        for d in info.shape:
            b = contract.bounds.get(d) if isinstance(d, str) else None
            shape.append(int(rng.integers(b.min, (b.max or b.min + 3) + 1)) if b else (d if isinstance(d, int) else 2))
        if info.dtype.startswith("int"):
            hi = contract.value_ranges.get(info.name, (0, 99))[1]
            feed[info.name] = rng.integers(1, hi + 1, size=shape).astype(info.dtype)
        else:
            feed[info.name] = rng.standard_normal(shape).astype(info.dtype)
    first = contract.inputs[0]
    x = feed[first.name]
    ok = kind in ("valid", "non_contiguous", "big_endian", "huge_values")
    if kind == "unknown_name":
        feed[name_text if name_text not in feed else name_text + "_"] = x
    elif kind == "missing_input":
        feed.pop(first.name)
    elif kind == "wrong_dtype":
        feed[first.name] = x.astype(np.float64 if x.dtype.kind in "iu" else np.int32)
    elif kind == "wrong_rank":
        feed[first.name] = x[None] if rng.integers(2) else x.reshape(-1)
    elif kind == "out_of_profile":
        axis = next((i for i, d in enumerate(first.shape) if isinstance(d, str) and contract.bounds.get(d)), None)
        if axis is None:
            return feed, True
        b = contract.bounds[first.shape[axis]]
        size = list(x.shape)
        size[axis] = b.max + int(rng.integers(1, 50))
        feed[first.name] = np.resize(x, size)
    elif kind == "empty_batch":
        feed = {k: v[:0] for k, v in feed.items()}
    elif kind == "nan_inf":
        if x.dtype.kind != "f":
            return feed, True  # an int input cannot hold NaN: the draw is a valid feed
        y = x.copy()
        y.flat[int(rng.integers(y.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
        feed[first.name] = y
    elif kind == "non_contiguous":
        big = np.concatenate([x, x], axis=-1)
        feed[first.name] = big[..., ::2]
    elif kind == "big_endian":
        feed[first.name] = x.astype(x.dtype.newbyteorder(">"))
    elif kind == "ids_out_of_vocab":
        if x.dtype.kind not in "iu" or first.name not in contract.value_ranges:
            return feed, True
        y = x.copy()
        y.flat[0] = contract.value_ranges[first.name][1] + 1 + int(rng.integers(1000)) if rng.integers(2) else -1
        feed[first.name] = y
    elif kind == "not_an_array":
        feed[first.name] = x.tolist()
    elif kind == "huge_values":
        if x.dtype.kind != "f":
            return feed, True
        feed[first.name] = (x * 1e30).astype(x.dtype)
    return feed, ok


class Tally:
    """Counts by kind and outcome; keeps the first few surprising cases."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.by_kind: dict[str, Counter] = {}
        self.surprises: list[dict[str, Any]] = []

    def record(self, kind: str, fn: Callable[[], Any], must_accept: bool) -> None:
        try:
            fn()
            outcome = "accepted"
        except EdgeattnError as e:
            outcome, err = "typed_error", e
        except Exception as e:  # noqa: BLE001 - exactly what the suite looks for
            outcome, err = "untyped_error", e
        if outcome == "accepted" and not must_accept:
            outcome = "accepted_bad"  # a bad input went through without a word
        if outcome == "typed_error" and must_accept:
            outcome = "refused_good"
        self.counts[outcome] += 1
        self.by_kind.setdefault(kind, Counter())[outcome] += 1
        if outcome in ("untyped_error", "accepted_bad", "refused_good") and len(self.surprises) < 20:
            self.surprises.append({"kind": kind, "outcome": outcome,
                                   "error": None if outcome == "accepted_bad" else f"{type(err).__name__}: {err}"[:300]})

    def to_dict(self) -> dict[str, Any]:
        return {"tried": sum(self.counts.values()), **{k: self.counts.get(k, 0) for k in
                ("accepted", "typed_error", "untyped_error", "accepted_bad", "refused_good")},
                "by_kind": {k: dict(v) for k, v in sorted(self.by_kind.items())}, "surprises": self.surprises}


def fuzz_runner(path: str, backend: str, examples: int) -> dict[str, Any]:
    """Hypothesis draws (kind, seed, name) triples; each feed goes through ``Runner.infer``. An accepted feed must
    give finite outputs of the declared names."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from runtime.loader import open_runner

    tally = Tally()
    with open_runner(path, backend) as runner:
        names = [o.name for o in runner.outputs]

        def check(feed, finite: bool):
            out = runner.infer(feed)
            if sorted(out) != sorted(names):
                raise AssertionError(f"outputs {sorted(out)}, expected {names}")
            if finite and not all(np.isfinite(np.asarray(v, np.float64)).all() for v in out.values()):
                raise AssertionError("a finite feed gave NaN/Inf outputs")

        @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
                  suppress_health_check=list(HealthCheck))
        @given(kind=st.sampled_from(FEED_KINDS), seed=st.integers(0, 2 ** 32 - 1), name=st.text(max_size=40))
        def one(kind: str, seed: int, name: str) -> None:
            feed, ok = mutate(kind, runner.contract, np.random.default_rng(seed), name)
            tally.record(kind, lambda: check(feed, kind != "huge_values"), ok)

        one()
    return tally.to_dict()


# ---- raw inputs: text and image files --------------------------------------------------------------------------
def _utf8(text: str) -> bool:
    """A str that is Unicode text (no lone surrogates, which no tokenizer can encode)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def fuzz_text(tokenizer: str, examples: int) -> dict[str, Any]:
    """Any str (huge, empty, control characters, surrogates) encodes or raises PreprocessError; non-str items too."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from runtime.preprocess import TextEncoder

    enc = TextEncoder(tokenizer)
    tally = Tally()
    junk = st.one_of(st.text(max_size=2000), st.just(""), st.just("x " * 200_000),
                     st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
                     st.binary(max_size=50), st.none(), st.integers())

    @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(items=st.lists(junk, min_size=1, max_size=4))
    def one(items) -> None:
        def run():
            ids = enc.encode(items, pad_to=32)
            if ids.shape[0] != len(items) or ids.shape[1] > max(32, enc.max_len or 32):
                raise AssertionError(f"ids of shape {ids.shape} for {len(items)} texts")
        tally.record("text", run, all(isinstance(t, str) and _utf8(t) for t in items))

    one()
    return tally.to_dict()


def fuzz_images(folder: Path, examples: int, preprocess: dict[str, Any]) -> dict[str, Any]:
    """Junk bytes, truncated PNG/JPEG, empty and text files named .png: load_image raises PreprocessError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from PIL import Image

    from runtime.preprocess import load_image

    folder.mkdir(parents=True, exist_ok=True)
    good = {}
    for fmt in ("PNG", "JPEG"):
        p = folder / f"good.{fmt.lower()}"
        Image.fromarray((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)).save(p, fmt)
        good[fmt] = p.read_bytes()
    tally = Tally()
    for fmt, data in good.items():
        tally.record("valid_image", lambda f=folder / f"good.{fmt.lower()}": load_image(f, preprocess), True)

    @settings(max_examples=examples, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(["junk", "truncated", "empty", "text"]), fmt=st.sampled_from(["PNG", "JPEG"]),
           junk=st.binary(max_size=4096), cut=st.floats(0.0, 0.9))
    def one(kind, fmt, junk, cut) -> None:
        p = folder / f"case.{fmt.lower()}"
        data = {"junk": junk, "truncated": good[fmt][: int(len(good[fmt]) * cut)], "empty": b"",
                "text": "not an image\n".encode()}[kind]
        p.write_bytes(data)
        tally.record(f"image_{kind}", lambda: load_image(p, preprocess), False)

    one()
    tally.record("missing_image", lambda: load_image(folder / "nope.png", preprocess), False)
    return tally.to_dict()


def main(argv: list[str] | None = None) -> int:
    """Child entry: ``python -m devtools.harden_cases --what runner|text|images ... --out JSON``."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--what", required=True, choices=["runner", "text", "images"])
    ap.add_argument("--path", required=True)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--preprocess", default="{}")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.what == "runner":
        res = fuzz_runner(a.path, a.backend, a.examples)
    elif a.what == "text":
        res = fuzz_text(a.path, a.examples)
    else:
        res = fuzz_images(Path(a.path), a.examples, json.loads(a.preprocess))
    res["seconds"] = round(time.perf_counter() - t0, 2)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
