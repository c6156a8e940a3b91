"""``python -m runtime MODEL --text "..." | --image FILE | --info``: classify with the thin runtime (no torch).

    python -m runtime artifacts/text_transformer/fp32.onnx --text "a gripping, beautiful film"
    python -m runtime artifacts/attention_cnn/int8.qdq.onnx --image shoe.png --backend openvino --json
    python -m runtime artifacts/vit/fp16.onnx --info
    python -m runtime artifacts/gpt2_imdb/fp32.onnx --generate "This movie was" --max-new-tokens 40

Errors print one line ``error: ...`` on stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from runtime.errors import PreprocessError, RuntimeErrorBase
from runtime.classify import Classifier
from runtime.loader import open_runner

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime", description="Classify text or images with an exported "
                                "model (ONNX or TensorRT engine) using the thin runtime: numpy + one backend.")
    p.add_argument("model", help="model file: .onnx (ONNX Runtime or OpenVINO) or .engine (TensorRT)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", metavar="SENTENCE", help="a sentence to classify (repeatable)")
    what.add_argument("--image", action="append", metavar="FILE", help="a PNG/JPEG file to classify (repeatable)")
    what.add_argument("--info", action="store_true", help="print the model's inputs, outputs and dim bounds")
    what.add_argument("--generate", action="append", metavar="PROMPT",
                      help="continue PROMPT with a decoder model (runtime.generate; repeatable: one left-padded batch)")
    gen = p.add_argument_group("generation (--generate)")
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy (implied by --temperature, "
                     "--top-k, --top-p)")
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")
    gen.add_argument("--stop-token", type=int, action="append", default=None, metavar="ID",
                     help="token id that ends a row (repeatable; default: the model's eos)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "openvino", "tensorrt"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the backend")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON (default: the one the spec names, beside MODEL)")
    p.add_argument("--pad-to", default=None, metavar="N|max",
                   help="pad text to N tokens or to the model's max sequence (default: the longest sentence)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="log backend details to stderr")
    return p


def _runner_kw(args: argparse.Namespace) -> dict[str, Any]:
    return {"threads": args.threads} if args.threads and args.backend in ("auto", "onnxruntime", "openvino") else {}


def _pad_to(value: str | None) -> int | str | None:
    if value is None or value == "max":
        return value
    try:
        return int(value)
    except ValueError:
        raise PreprocessError(f"--pad-to: got '{value}', expected an integer or 'max'") from None


def info(args: argparse.Namespace) -> dict[str, Any]:
    """Inputs, outputs, bounds and providers of the model, as a dict."""
    with open_runner(args.model, args.backend, **_runner_kw(args)) as r:
        c = r.contract
        spec = getattr(r, "spec", None) or {}
        return {
            "model": str(args.model), "backend": r.backend, "providers": getattr(r, "providers", None),
            "name": spec.get("name"), "task": spec.get("task"), "labels": spec.get("labels"),
            "inputs": [{"name": i.name, "dtype": i.dtype, "shape": c.describe(i)} for i in r.inputs],
            "outputs": [{"name": o.name, "dtype": o.dtype, "shape": c.describe(o)} for o in r.outputs],
            "bounds": {k: [b.min, b.max] for k, b in c.bounds.items()},
        }


def print_info(d: dict[str, Any]) -> None:
    print(f"model    {d['model']}")
    print(f"backend  {d['backend']}" + (f" {d['providers']}" if d.get("providers") else ""))
    if d.get("name"):
        print(f"spec     {d['name']} ({d['task']}), labels {d['labels']}")
    for kind in ("inputs", "outputs"):
        for t in d[kind]:
            print(f"{kind[:-1]:<8} {t['name']:<12} {t['dtype']:<8} {t['shape']}")


def classify(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the classifier over --text or --image items; one dict per item."""
    with Classifier(args.model, backend=args.backend, tokenizer=args.tokenizer, pad_to=_pad_to(args.pad_to),
                    **_runner_kw(args)) as clf:
        items = args.text if args.text else args.image
        preds = clf.classify_text(items) if args.text else clf.classify_image(items)
    return [{"input": item, "label": label, "probabilities": probs} for item, (label, probs) in zip(items, preds)]


def print_table(results: list[dict[str, Any]]) -> None:
    """One block per input: the label, then every class sorted by probability."""
    for i, r in enumerate(results):
        if i:
            print()
        print(f"{r['input']}\n  label: {r['label']}")
        width = max(len(k) for k in r["probabilities"])
        for label, p in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]):
            print(f"  {label:<{width}}  {p:.6f}")


def generate_text(args: argparse.Namespace) -> int:
    """--generate: one prompt streams its text to stdout as tokens arrive; several prompts run as one batch (left
    padding, each row stops on its own) and print one block each (or JSON)."""
    from runtime.generate import TextGenerator

    sampling = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
                if v is not None}
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=bool(args.sample or sampling), seed=args.seed,
              stop_tokens=tuple(args.stop_token) if args.stop_token else None, **sampling)
    with TextGenerator(args.model, backend=args.backend, tokenizer=args.tokenizer, threads=args.threads) as g:
        if len(args.generate) == 1 and not args.json:
            pieces = g.stream_text(args.generate[0], **kw)
            first = next(pieces, "")  # a bad prompt or option raises here, before anything is printed
            print(args.generate[0] + first, end="", flush=True)
            for piece in pieces:
                print(piece, end="", flush=True)
            print()
            return 0
        results = g.generate(args.generate, **kw)
    rows = [{"prompt": p, "text": r.text, "tokens": r.tokens, "finish_reason": r.finish_reason}
            for p, r in zip(args.generate, results)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("\n\n".join(f"{r['prompt']}{r['text']}" for r in rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.generate:
            return generate_text(args)
        if args.info:
            d = info(args)
            print(json.dumps(d, indent=2)) if args.json else print_info(d)
            return 0
        results = classify(args)
    except RuntimeErrorBase as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
