"""BPE tokenizers read from a ``tokenizers`` JSON file (``tokenizer.json``), in pure Python (stdlib only).

    tok = BPETokenizer.from_file("artifacts/gpt2_imdb/tokenizer.json")
    ids = tok.encode("This movie was")          # [1212, 3807, 373] with the real gpt2 tokenizer
    tok.decode(ids)                              # 'This movie was'

A device that runs ``runtime.generate`` needs neither transformers nor the ``tokenizers`` package: this module does
what ``tokenizers`` does for the ``tokenizer.json`` forms of the decoders people deploy, and the tests check that the
ids and the text equal ``tokenizers``' own on real reviews and hostile text (tests/test_generate.py,
tests/test_bpe.py). The forms:

- GPT-2: byte-level BPE, the ByteLevel pre-tokenizer with GPT-2's split pattern, the ByteLevel decoder.
- Llama-3 / Qwen2: byte-level BPE behind a ``Split`` pre-tokenizer with their own pattern (``\\p{L}``, ``\\p{N}``,
  ``(?i:...)``), ``ignore_merges`` (Llama-3), NFC (Qwen2), a ``TemplateProcessing`` post-processor that adds BOS.
- Llama-2 / Mistral (SentencePiece BPE): characters as symbols with ``byte_fallback`` (``<0xNN>`` tokens) or an
  ``unk_token``, the ``Prepend``/``Replace`` normalizers or the ``Metaspace`` pre-tokenizer (``prepend_scheme``,
  ``split``), decoders ``Replace``, ``ByteFallback``, ``Fuse``, ``Strip`` or ``Metaspace``.

What each part supports; anything else is refused with a PreprocessError naming the component:

- ``model``: BPE; merges as ``"a b"`` strings or ``["a", "b"]`` pairs; ``ignore_merges``, ``byte_fallback``,
  ``unk_token`` / ``fuse_unk``; no dropout, no ``continuing_subword_prefix`` / ``end_of_word_suffix``. A symbol
  neither in the vocabulary nor covered by byte fallback or an unk token is refused (``tokenizers`` drops it).
- ``normalizer``: NFC/NFD/NFKC/NFKD, Lowercase, Prepend, Replace, Strip, or a Sequence of those.
- ``pre_tokenizer``: ByteLevel (``add_prefix_space``, ``use_regex``), Split (a String or Regex pattern, every
  ``behavior``, ``invert``), Metaspace, or a Sequence of those.
- ``post_processor``: TemplateProcessing (the single-sequence template), ByteLevel, Roberta/BertProcessing, Sequence.
- ``decoder``: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, or a Sequence of those.
- ``added_tokens``: matched as ``tokenizers`` does (leftmost-longest; non-normalized ones in the raw text, normalized
  ones in the normalized text; ``lstrip`` / ``rstrip`` / ``single_word``), never merged with their neighbours.

Regular expressions. ``tokenizers`` uses Oniguruma; Python's ``re`` has no ``\\p{..}`` and its ``\\s`` counts
U+001C..1F. :func:`compile_pattern` translates a pattern once: ``\\p{X}`` / ``\\P{X}`` (a Unicode general category:
one or two letters) become explicit code-point ranges from ``unicodedata``, ``\\s`` / ``\\S`` the Unicode
White_Space set, ``\\d`` / ``\\D`` the decimal digits (Nd), ``\\x{HHHH}`` a code point; ``\\w``, ``\\b``, POSIX
brackets, scripts (``\\p{Han}``) and the like are refused. The Unicode version of the Python build may differ from
the one ``tokenizers`` was built with for characters assigned in between.
"""
from __future__ import annotations

import heapq
import json
import re
import sys
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from runtime.errors import PreprocessError

# Unicode White_Space (what \s means for the regex engines tokenizers uses); str.isspace() also counts U+001C..1F
WHITE_SPACE = frozenset([chr(c) for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                                          0x2028, 0x2029, 0x202F, 0x205F, 0x3000)])
# ByteLevel's split pattern (GPT-2's), as tokenizers writes it
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend", "Replace", "Strip", "Sequence")
PRE_TOKENIZERS = ("ByteLevel", "Split", "Metaspace", "Sequence")
DECODERS = ("ByteLevel", "Metaspace", "Replace", "ByteFallback", "Fuse", "Strip", "Sequence")
POST_PROCESSORS = ("TemplateProcessing", "ByteLevel", "RobertaProcessing", "BertProcessing", "Sequence")
SPLIT_BEHAVIORS = ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous")
PREPEND_SCHEMES = ("always", "first", "never")
CACHE_MAX = 100_000  # pre-tokens whose ids are kept
CACHE_LONGEST = 256  # longer pre-tokens (a whole SentencePiece sentence) are not kept (tokenizers' limit too)


def _refuse(source: str, what: str, got: Any, expected: Sequence[str] | str) -> PreprocessError:
    exp = expected if isinstance(expected, str) else f"one of {list(expected)}"
    return PreprocessError(f"tokenizer '{source}': {what} {got!r} is not supported by runtime.bpe; expected {exp} "
                           "(use the tokenizers package for this tokenizer)")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the 256 symbols byte-level BPE starts from)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars)))


# ---- Oniguruma patterns as Python re -------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _category_ranges() -> dict[str, list[tuple[int, int]]]:
    """Two-letter Unicode general category -> sorted code-point ranges (one pass over the code space)."""
    out: dict[str, list[tuple[int, int]]] = {}
    cat_of = unicodedata.category
    prev, start = cat_of(chr(0)), 0
    for cp in range(1, sys.maxunicode + 2):
        cat = cat_of(chr(cp)) if cp <= sys.maxunicode else None
        if cat != prev:
            out.setdefault(prev, []).append((start, cp - 1))
            prev, start = cat, cp
    return out


def _ranges_text(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(f"\\U{a:08X}" if a == b else f"\\U{a:08X}-\\U{b:08X}" for a, b in ranges)


@lru_cache(maxsize=64)
def _class_body(name: str) -> str:
    """The inside of a character class for ``\\p{name}`` (a general category: 'L', 'Lu', ...), 's' (White_Space)."""
    if name == "s":
        return _ranges_text((ord(c), ord(c)) for c in sorted(WHITE_SPACE))
    table = _category_ranges()
    cats = [c for c in table if c == name or (len(name) == 1 and c[0] == name)]
    return _ranges_text(sorted(r for c in cats for r in table[c]))


GENERAL_CATEGORIES = frozenset(["L", "M", "N", "P", "S", "Z", "C", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd",
                                "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs",
                                "Zl", "Zp", "Cc", "Cf", "Co", "Cn"])
_PASS_ESCAPES = set("rntfvae0123456789")  # escapes that mean the same in Oniguruma and Python's re


def translate_pattern(pattern: str, source: str = "<pattern>") -> str:
    """An Oniguruma pattern (as ``tokenizers`` writes it) -> the same pattern for Python's ``re`` (see the module
    docstring); PreprocessError naming the construct for what has no exact translation."""
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False

    def bad(what: str) -> PreprocessError:
        return PreprocessError(f"tokenizer '{source}': regex construct {what} is not supported by runtime.bpe; "
                               "expected \\p{<general category>}, \\s, \\S, \\d, \\D and the constructs Python's re "
                               "reads the same way (use the tokenizers package for this tokenizer)")

    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e in "pP":
                m = re.match(r"\{\^?(\w+)\}|([A-Z])", pattern[i + 2:])
                if not m:
                    raise bad(pattern[i:i + 6])
                name = m[1] or m[2]
                negate = (e == "P") != bool(m[0].startswith("{^"))
                if name not in GENERAL_CATEGORIES:
                    raise bad(pattern[i:i + 2 + m.end()])
                body = _class_body(name)
                if in_class and negate:
                    raise bad(pattern[i:i + 2 + m.end()] + " inside [...]")
                out.append(body if in_class else f"[{'^' if negate else ''}{body}]")
                i += 2 + m.end()
                continue
            if e in "sSdD":
                body = _class_body("s" if e in "sS" else "Nd")
                if in_class and e in "SD":
                    raise bad(f"\\{e} inside [...]")
                out.append(body if in_class else f"[{'^' if e in 'SD' else ''}{body}]")
                i += 2
                continue
            if e == "x" and pattern.startswith("{", i + 2):
                m = re.match(r"\{([0-9A-Fa-f]{1,6})\}", pattern[i + 2:])
                if not m:
                    raise bad(pattern[i:i + 8])
                out.append(f"\\U{int(m[1], 16):08X}")
                i += 2 + m.end()
                continue
            if e.isalnum() and e not in _PASS_ESCAPES and e not in "xu":
                raise bad(f"\\{e}")
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if c == "[":
            if in_class:
                raise bad("[ inside [...] (nested class or POSIX bracket)")
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":  # a literal ']' first in a class
                out.append("\\]")
                i += 1
            continue
        if c == "]" and in_class:
            in_class = False
        elif c == "&" and in_class and pattern.startswith("&&", i):
            raise bad("&& (class intersection)")
        out.append(c)
        i += 1
    return "".join(out)


@lru_cache(maxsize=32)
def compile_pattern(pattern: str, source: str = "<pattern>") -> re.Pattern:
    """:func:`translate_pattern`, compiled (cached: a tokenizer's pattern is compiled once per process)."""
    try:
        return re.compile(translate_pattern(pattern, source))
    except re.error as e:
        raise _refuse(source, "regex", pattern, f"a pattern Python's re compiles once translated ({e})") from e


def _pattern(spec: Any, source: str, what: str) -> re.Pattern:
    """``{"String": s}`` or ``{"Regex": r}`` (tokenizers' pattern field) -> a compiled pattern."""
    if isinstance(spec, dict) and isinstance(spec.get("String"), str):
        return re.compile(re.escape(spec["String"]))
    if isinstance(spec, dict) and isinstance(spec.get("Regex"), str):
        return compile_pattern(spec["Regex"], source)
    raise _refuse(source, f"{what} pattern", spec, "{'String': ...} or {'Regex': ...}")


# ---- normalizers -------------------------------------------------------------------------------------------------
def _steps(spec: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    """A component and its nested Sequences, flattened."""
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [s for sub in spec.get(key) or [] for s in _steps(sub, key)]
    return [spec]


def _ws_strip(text: str, left: bool, right: bool) -> str:
    chars = "".join(WHITE_SPACE)
    text = text.lstrip(chars) if left else text
    return text.rstrip(chars) if right else text


def _normalizer(spec: dict[str, Any] | None, source: str) -> Callable[[str], str] | None:
    fns: list[Callable[[str], str]] = []
    for s in _steps(spec, "normalizers"):
        kind = s.get("type")
        if kind in ("NFC", "NFD", "NFKC", "NFKD"):
            fns.append(lambda t, k=kind: unicodedata.normalize(k, t))
        elif kind == "Lowercase":
            fns.append(str.lower)
        elif kind == "Prepend":
            fns.append(lambda t, p=str(s.get("prepend", "")): p + t if t else t)
        elif kind == "Replace":
            fns.append(lambda t, r=_pattern(s.get("pattern"), source, "Replace"), c=str(s.get("content", "")):
                       r.sub(lambda _m: c, t))
        elif kind == "Strip":
            fns.append(lambda t, a=bool(s.get("strip_left")), b=bool(s.get("strip_right")): _ws_strip(t, a, b))
        else:
            raise _refuse(source, "normalizer", kind, NORMALIZERS)
    if not fns:
        return None

    def norm(text: str) -> str:
        for f in fns:
            text = f(text)
        return text

    return norm


# ---- pre-tokenizers: (piece, at the start of the text) -> pieces ----------------------------------------------------
Piece = tuple[str, bool]


def _split(text: str, regex: re.Pattern, behavior: str, invert: bool = False) -> list[tuple[int, int]]:
    """tokenizers' NormalizedString.split: (start, end) of the pieces of ``text`` under ``behavior``."""
    if not text:
        return []
    marks: list[tuple[int, int, bool]] = []
    prev = 0
    for m in regex.finditer(text):
        if m.start() == m.end():
            continue
        if prev != m.start():
            marks.append((prev, m.start(), invert))
        marks.append((m.start(), m.end(), not invert))
        prev = m.end()
    if prev != len(text):
        marks.append((prev, len(text), invert))
    out: list[list[int]] = []
    if behavior == "Isolated":
        return [(a, b) for a, b, _ in marks]
    if behavior == "Removed":
        return [(a, b) for a, b, hit in marks if not hit]
    if behavior in ("Contiguous", "MergedWithPrevious"):
        last = False
        for a, b, hit in marks:
            join = hit == last if behavior == "Contiguous" else (hit and not last)
            if join and out:
                out[-1][1] = b
            else:
                out.append([a, b])
            last = hit
        return [(a, b) for a, b in out]
    last = False  # MergedWithNext: the same walk from the right
    for a, b, hit in reversed(marks):
        if hit and not last and out:
            out[-1][0] = a
        else:
            out.append([a, b])
        last = hit
    return [(a, b) for a, b in reversed(out)]


def _split_pieces(pieces: list[Piece], regex: re.Pattern, behavior: str, invert: bool) -> list[Piece]:
    return [(text[a:b], first and a == 0) for text, first in pieces for a, b in _split(text, regex, behavior, invert)]


class _PreTokenizer:
    """The pre-tokenizer chain of a tokenizer.json; ``byte_level``: the pieces come out as byte symbols."""

    def __init__(self, spec: dict[str, Any] | None, source: str):
        self.steps: list[Callable[[list[Piece]], list[Piece]]] = []
        self.byte_level = False
        for s in _steps(spec, "pretokenizers"):
            kind = s.get("type")
            if kind == "ByteLevel":
                self.byte_level = True
                self.steps.append(self._byte_level(bool(s.get("add_prefix_space", False)),
                                                   bool(s.get("use_regex", True)), source))
            elif kind == "Split":
                behavior = s.get("behavior")
                if behavior not in SPLIT_BEHAVIORS:
                    raise _refuse(source, "Split behavior", behavior, SPLIT_BEHAVIORS)
                regex, invert = _pattern(s.get("pattern"), source, "Split"), bool(s.get("invert", False))
                self.steps.append(lambda ps, r=regex, b=behavior, v=invert: _split_pieces(ps, r, b, v))
            elif kind == "Metaspace":
                self.steps.append(self._metaspace(s, source))
            else:
                raise _refuse(source, "pre_tokenizer", kind, PRE_TOKENIZERS)

    @staticmethod
    def _byte_level(prefix: bool, use_regex: bool, source: str) -> Callable[[list[Piece]], list[Piece]]:
        table = bytes_to_unicode()
        regex = compile_pattern(GPT2_PATTERN, source)

        def step(pieces: list[Piece]) -> list[Piece]:
            if prefix:
                pieces = [(t if t.startswith(" ") else " " + t, f) for t, f in pieces]
            if use_regex:
                pieces = _split_pieces(pieces, regex, "Isolated", False)
            return [("".join(table[b] for b in t.encode("utf-8")), f) for t, f in pieces]

        return step

    @staticmethod
    def _metaspace(s: dict[str, Any], source: str) -> Callable[[list[Piece]], list[Piece]]:
        rep, scheme = str(s.get("replacement", "▁")), _prepend_scheme(s, source)
        split = bool(s.get("split", True))
        regex = re.compile(re.escape(rep))

        def step(pieces: list[Piece]) -> list[Piece]:
            out: list[Piece] = []
            for t, first in pieces:
                t = t.replace(" ", rep)
                if not t.startswith(rep) and (scheme == "always" or (scheme == "first" and first)):
                    t = rep + t
                out += _split_pieces([(t, first)], regex, "MergedWithNext", False) if split else [(t, first)]
            return out

        return step

    def __call__(self, text: str, first: bool) -> list[str]:
        pieces: list[Piece] = [(text, first)] if text else []
        for step in self.steps:
            pieces = [p for p in step(pieces) if p[0]]  # tokenizers drops empty pieces between steps
        return [t for t, _ in pieces]


def _prepend_scheme(s: dict[str, Any], source: str) -> str:
    """Metaspace's ``prepend_scheme`` (older files: ``add_prefix_space``), as tokenizers reads it."""
    scheme = s.get("prepend_scheme") or "always"
    if s.get("add_prefix_space") is False:
        scheme = "never"
    if scheme not in PREPEND_SCHEMES:
        raise _refuse(source, "Metaspace prepend_scheme", scheme, PREPEND_SCHEMES)
    return scheme


# ---- decoders: token strings -> strings ------------------------------------------------------------------------------
def _byte_fallback(tokens: list[str]) -> list[str]:
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            try:
                out.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" * len(pending))
            pending.clear()

    for t in tokens:
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">") and re.fullmatch(r"[0-9A-Fa-f]{2}", t[3:5]):
            pending.append(int(t[3:5], 16))
        else:
            flush()
            out.append(t)
    flush()
    return out


def _strip(tokens: list[str], content: str, start: int, stop: int) -> list[str]:
    out = []
    for t in tokens:
        a = 0
        while a < min(start, len(t)) and t[a] == content:
            a += 1
        b = len(t)
        while len(t) - b < stop and b > a and t[b - 1] == content:
            b -= 1
        out.append(t[a:b])
    return out


def _decoder(spec: dict[str, Any] | None, source: str) -> Callable[[list[str]], str]:
    fns: list[Callable[[list[str]], list[str]]] = []
    for s in _steps(spec, "decoders"):
        kind = s.get("type")
        if kind == "ByteLevel":
            dec = {c: b for b, c in bytes_to_unicode().items()}
            fns.append(lambda ts, d=dec: [b"".join(bytes(d[c] for c in t) if all(c in d for c in t)
                                                   else t.encode("utf-8") for t in ts).decode("utf-8", "replace")])
        elif kind == "Metaspace":
            rep, keep_first = str(s.get("replacement", "▁")), _prepend_scheme(s, source) == "never"
            fns.append(lambda ts, r=rep, k=keep_first: [t.replace(r, "" if i == 0 and not k else " ")
                                                        for i, t in enumerate(ts)])
        elif kind == "Replace":
            fns.append(lambda ts, r=_pattern(s.get("pattern"), source, "Replace"), c=str(s.get("content", "")):
                       [r.sub(lambda _m: c, t) for t in ts])
        elif kind == "ByteFallback":
            fns.append(_byte_fallback)
        elif kind == "Fuse":
            fns.append(lambda ts: ["".join(ts)])
        elif kind == "Strip":
            fns.append(lambda ts, c=str(s.get("content", " ")), a=int(s.get("start", 0)), b=int(s.get("stop", 0)):
                       _strip(ts, c, a, b))
        else:
            raise _refuse(source, "decoder", kind, DECODERS)
    if spec is None:
        return " ".join

    def decode(tokens: list[str]) -> str:
        for f in fns:
            tokens = f(tokens)
        return "".join(tokens)

    return decode


# ---- post-processors: the special tokens around one sequence ---------------------------------------------------------
def _post_processor(spec: dict[str, Any] | None, source: str) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the sequence that ``encode(text)`` adds (tokenizers' add_special_tokens=True)."""
    before: list[int] = []
    after: list[int] = []
    for s in _steps(spec, "processors"):
        kind = s.get("type")
        if kind == "ByteLevel":
            continue
        if kind in ("RobertaProcessing", "BertProcessing"):
            before, after = [int(s["cls"][1])], [int(s["sep"][1])]
        elif kind == "TemplateProcessing":
            specials = s.get("special_tokens") or {}
            before, after, seen = [], [], False
            for item in s.get("single") or []:
                if "Sequence" in item:
                    seen = True
                    continue
                name = (item.get("SpecialToken") or {}).get("id")
                if name not in specials:
                    raise _refuse(source, "TemplateProcessing item", item, "a SpecialToken listed in special_tokens")
                (after if seen else before).extend(int(i) for i in specials[name]["ids"])
        else:
            raise _refuse(source, "post_processor", kind, POST_PROCESSORS)
    return before, after


# ---- the tokenizer ---------------------------------------------------------------------------------------------------
class _Added:
    """tokenizers' added vocabulary: non-normalized tokens matched in the raw text, normalized ones in the
    normalized text (by their normalized content), leftmost-longest, with lstrip / rstrip / single_word."""

    def __init__(self, tokens: list[dict[str, Any]], normalize: Callable[[str], str] | None):
        self.raw = self._table([t for t in tokens if not t.get("normalized", True)], None)
        self.normalized = self._table([t for t in tokens if t.get("normalized", True)], normalize)

    @staticmethod
    def _table(tokens: list[dict[str, Any]], normalize) -> tuple[re.Pattern, dict[str, dict[str, Any]]] | None:
        by_text = {}
        for t in tokens:
            text = normalize(t["content"]) if normalize else t["content"]
            if text:
                by_text.setdefault(text, t)
        if not by_text:
            return None
        alts = sorted(by_text, key=lambda x: (-len(x), x))  # longest first: leftmost-longest
        return re.compile("|".join(re.escape(a) for a in alts)), by_text

    @staticmethod
    def split(text: str, table) -> list[tuple[str, int | None, int]]:
        """text -> [(piece, added id or None, start offset)] covering ``text``."""
        if table is None or not text:
            return [(text, None, 0)]
        regex, by_text = table
        out: list[tuple[str, int | None, int]] = []
        done = 0
        for m in regex.finditer(text):
            tok = by_text[m[0]]
            start, stop = m.start(), m.end()
            if start < done:
                continue
            if tok.get("single_word") and ((start > 0 and re.match(r"\w", text[start - 1]))
                                           or (stop < len(text) and re.match(r"\w", text[stop]))):
                continue
            if tok.get("lstrip"):
                while start > done and text[start - 1] in WHITE_SPACE:
                    start -= 1
            if tok.get("rstrip"):
                while stop < len(text) and text[stop] in WHITE_SPACE:
                    stop += 1
            if done < start:
                out.append((text[done:start], None, done))
            out.append((text[start:stop], int(tok["id"]), start))
            done = stop
        if done < len(text):
            out.append((text[done:], None, done))
        return out


class BPETokenizer:
    """Encode/decode with a BPE ``tokenizer.json`` (see the module docstring for the forms it reads)."""

    def __init__(self, spec: dict[str, Any], source: str = "<dict>"):
        self.source = source
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise _refuse(source, "model type", model.get("type"), "'BPE'")
        for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
            if model.get(key):
                raise _refuse(source, f"BPE {key}", model[key], "none")
        self.normalize = _normalizer(spec.get("normalizer"), source)
        self.pre_tokenize = _PreTokenizer(spec.get("pre_tokenizer"), source)
        self.decode_tokens = _decoder(spec.get("decoder"), source)
        self.prefix_ids, self.suffix_ids = _post_processor(spec.get("post_processor"), source)
        self.vocab: dict[str, int] = {str(k): int(v) for k, v in model["vocab"].items()}
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.byte_fallback = bool(model.get("byte_fallback", False))
        self.fuse_unk = bool(model.get("fuse_unk", False))
        self.unk = model.get("unk_token")
        self.ranks: dict[tuple[str, str], int] = {}
        for r, m in enumerate(model.get("merges") or []):
            a, b = m.split(" ", 1) if isinstance(m, str) else m
            self.ranks.setdefault((a, b), r)
        added = list(spec.get("added_tokens") or [])
        self.id_to_token: dict[int, str] = {v: k for k, v in self.vocab.items()}
        for t in added:
            self.vocab.setdefault(t["content"], int(t["id"]))
            self.id_to_token[int(t["id"])] = t["content"]
        self.special_ids = {int(t["id"]) for t in added if t.get("special")}
        self.added = _Added(added, self.normalize)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> "BPETokenizer":
        p = Path(path)
        if not p.is_file():
            raise PreprocessError(f"tokenizer '{p}': no such file; expected the tokenizer.json the export writes "
                                  "beside the model")
        try:
            spec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PreprocessError(f"tokenizer '{p}': cannot read ({e}); expected a tokenizers JSON file") from e
        return cls(spec, str(p))

    @property
    def vocab_size(self) -> int:
        return max(self.id_to_token) + 1

    def token_to_id(self, token: str) -> int | None:
        return self.vocab.get(token)

    # ---- encoding ------------------------------------------------------------------------------------------------
    def _symbols(self, word: str) -> list[str]:
        """A pre-token's first symbols: its characters, ``<0xNN>`` bytes (byte fallback) or the unk token."""
        out: list[str] = []
        unk_run = False
        for ch in word:
            if ch in self.vocab:
                out.append(ch)
                unk_run = False
                continue
            if self.byte_fallback:
                codes = [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
                if all(c in self.vocab for c in codes):
                    out += codes
                    unk_run = False
                    continue
            if self.unk is None or self.unk not in self.vocab:
                raise PreprocessError(f"tokenizer '{self.source}': symbol {ch!r} is not in the vocabulary and there is "
                                      "no byte fallback or unk token for it; expected a vocabulary that covers it")
            if not (unk_run and self.fuse_unk):
                out.append(self.unk)
            unk_run = True
        return out

    def _merge(self, syms: list[str]) -> list[str]:
        """tokenizers' merge loop: the lowest-ranked adjacent pair first (leftmost among equals), until none is left."""
        n, ranks = len(syms), self.ranks
        if n < 2:
            return syms
        nxt, prev, alive = list(range(1, n + 1)), list(range(-1, n - 1)), [True] * n
        nxt[-1] = -1
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((syms[i], syms[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j < 0 or ranks.get((syms[i], syms[j])) != r:
                continue  # an expired entry
            syms[i] += syms[j]
            alive[j] = False
            k = nxt[i] = nxt[j]
            if k >= 0:
                prev[k] = i
                if (r2 := ranks.get((syms[i], syms[k]))) is not None:
                    heapq.heappush(heap, (r2, i))
            p = prev[i]
            if p >= 0 and (r2 := ranks.get((syms[p], syms[i]))) is not None:
                heapq.heappush(heap, (r2, p))
        return [s for s, a in zip(syms, alive) if a]

    def _bpe(self, word: str) -> list[int]:
        """One pre-token -> ids."""
        hit = self._cache.get(word)
        if hit is not None:
            return hit
        if self.ignore_merges and word in self.vocab:
            ids = [self.vocab[word]]
        else:
            ids = [self.vocab[s] for s in self._merge(self._symbols(word))]
        if len(word) < CACHE_LONGEST and len(self._cache) < CACHE_MAX:
            self._cache[word] = ids
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Text -> token ids, as ``tokenizers.Tokenizer.encode(text, add_special_tokens=...).ids``: the
        post-processor's special tokens (Llama's BOS) included by default; GPT-2 adds none."""
        if not isinstance(text, str):
            raise PreprocessError(f"text: got {type(text).__name__}, expected str")
        ids: list[int] = []
        for piece, added_id, start in self.added.split(text, self.added.raw):
            if added_id is not None:
                ids.append(added_id)
                continue
            norm = self.normalize(piece) if self.normalize is not None else piece
            for sub, sub_id, sub_start in self.added.split(norm, self.added.normalized):
                if sub_id is not None:
                    ids.append(sub_id)
                    continue
                for word in self.pre_tokenize(sub, start == 0 and sub_start == 0):
                    ids.extend(self._bpe(word))
        return [*self.prefix_ids, *ids, *self.suffix_ids] if add_special_tokens else ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    # ---- decoding ------------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text through the tokenizer's decoder (``tokenizers.Tokenizer.decode``)."""
        tokens = []
        for i in ids:
            i = int(i)
            tok = self.id_to_token.get(i)
            if tok is None:
                raise PreprocessError(f"decode: token id {i} is not in the vocabulary (0..{self.vocab_size - 1})")
            if not (skip_special_tokens and i in self.special_ids):
                tokens.append(tok)
        return self.decode_tokens(tokens)


__all__ = ["BPETokenizer", "bytes_to_unicode", "compile_pattern", "translate_pattern", "GPT2_PATTERN"]
