"""runtime.bpe on the tokenizer.json forms of the decoders people deploy, checked by value against the ``tokenizers``
library on the same file: ids (with and without the post-processor's special tokens) and decoded text (special
tokens skipped and kept) on hostile text, and every token id decoded alone and all together. The tokenizers are
fitted here on 300 IMDB train reviews with ``tokenizers``' trainer and written in each model family's JSON form:

- Llama-2 / Mistral as published (SentencePiece BPE converted by transformers, ``legacy``): Prepend + Replace
  normalizers, no pre-tokenizer, ``<0x00>``..``<0xFF>`` in the vocabulary with byte fallback, BOS added by a
  TemplateProcessing post-processor, decoders Replace/ByteFallback/Fuse/Strip;
- transformers 5's LlamaTokenizer form (the Metaspace pre-tokenizer, prepend_scheme 'first', no split), built by
  transformers itself from the fitted vocabulary and merges;
- SentencePieceBPETokenizer's own form (NFKC, Metaspace 'always' with split, the Metaspace decoder) with an unk
  token instead of byte fallback (fuse_unk);
- Llama-3 (byte-level BPE behind its Split pattern, ignore_merges, ``<|begin_of_text|>`` added by the template);
- Qwen2 (byte-level BPE behind its Split pattern, NFC), built by transformers' Qwen2Tokenizer.
A limited alphabet (100 characters) makes emoji, CJK and rare letters go through byte fallback / unk.
"""
from __future__ import annotations

import json

import pytest

from runtime.errors import PreprocessError

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
BYTES = [f"<0x{b:02X}>" for b in range(256)]
VOCAB = 600

HOSTILE = [
    "", " ", "  ", "\n", "\r\n", "\n\n\n", "\t", "a", "This movie was great, wasn't it?",
    "  leading and trailing  ", "multiple    spaces\tand\ttabs\n\nnewlines  \n", "CRLF line\r\nnext line\r\n\r\n",
    "it's I'M we'll 'S ''s x.'s don't WE'LL 'Ll \u017f's 'ſ \u212a's",  # long s and Kelvin sign fold to s / k
    "digits 1 12 123 1234 12345678901234567890 3.14159 1,000,000 ½ ٣ ۴ 一二三 ⅷ",
    "émigré naïve café e\u0301 n\u0303 a\u0308\u0301 \u1e9b\u0323 Å Å",  # composed and combining marks
    "😀 🎬🍿 👩🏽\u200d💻 🏳️\u200d🌈 ❤️ 🇫🇷",  # emoji, skin tone, ZWJ sequences, flags
    "中文字符和日本語の文章、한국어 텍스트。", "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "ideographic\u3000space nb\u00a0sp thin\u2009sp \u2028line\u2029para \x1c\x1d\x1e\x1f odd",
    "Ǆ ǅ ʰ ª ß ẞ İstanbul ΣΑΣ ﬁ ﬀ", "العربية עברית हिन्दी ไทย", "<s>", "</s>", "<s> hello </s>",
    "text<s>glued</s>text", " <s>  spaced  </s> ", "<|begin_of_text|>hi<|end_of_text|>", "<|endoftext|>x<|endoftext|>",
    "<unk> literal", "▁already▁meta ▁ ▁▁", "<0x41> looks like a byte", "'", "''", "'s", "...", "!!!???",
    "a <sep> b", "  <sep>  x<sep>y", "movie night, Movie Night, movie  night", "film films sfilm film. film_x \u00e9film",
    "a\u0300\u0301\u0302\u0303\u0304 stacked", "\U0001f600" * 3 + " end", "x" * 300,
]


@pytest.fixture(scope="module")
def texts():
    from zoo.data import load_imdb

    return list(load_imdb().train.x[:300])


def _fit(texts, pre, normalizer=None, byte_level=False, specials=()):
    """(vocab, merges) of a BPE fitted with ``tokenizers`` on ``texts`` behind ``pre`` / ``normalizer``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    kw = dict(initial_alphabet=pre_tokenizers.ByteLevel.alphabet()) if byte_level else dict(limit_alphabet=100)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(specials),
                                                       show_progress=False, **kw))
    spec = json.loads(tok.to_str())
    return spec["model"]["vocab"], [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                                     for m in spec["model"]["merges"]]


def _spm_vocab(texts, normalizer, pre):
    """Llama's vocabulary layout: <unk> <s> </s>, the 256 byte tokens, then the fitted pieces."""
    vocab, merges = _fit(texts, pre, normalizer)
    out = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *BYTES])}
    for t in sorted(vocab, key=vocab.get):
        out.setdefault(t, len(out))
    return out, merges


def _llama2_legacy(texts):
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from tokenizers import AddedToken

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    vocab, merges = _spm_vocab(texts, norm, None)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = norm
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def _llama_transformers(texts):
    """transformers 5's own LlamaTokenizer (Metaspace, prepend_scheme 'first') on the fitted vocabulary."""
    import transformers
    from tokenizers import normalizers

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    vocab, merges = _spm_vocab(texts, norm, None)
    return transformers.LlamaTokenizer(vocab=vocab, merges=merges)


def _sentencepiece_unk(texts):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    norm, pre = normalizers.NFKC(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    vocab, merges = _fit(texts, pre, norm, specials=["<unk>"])
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens([AddedToken("<unk>", normalized=False, special=True)])
    tok.add_tokens([AddedToken("movie night", normalized=True), AddedToken("<sep>", lstrip=True, rstrip=True),
                    AddedToken("film", single_word=True)])
    return tok


def _llama3(texts):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    vocab, merges = _fit(texts, pre, byte_level=True, specials=specials)
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>",
                                                                                        vocab["<|begin_of_text|>"])])])
    tok.decoder = decoders.ByteLevel()
    return tok


def _qwen2(texts):
    import transformers
    from tokenizers import Regex, normalizers, pre_tokenizers

    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = _fit(texts, pre, normalizers.NFC(), byte_level=True, specials=["<|endoftext|>"])
    return transformers.Qwen2Tokenizer(vocab=vocab, merges=merges)


FORMS = {"llama2_legacy": _llama2_legacy, "llama_transformers": _llama_transformers,
         "sentencepiece_unk": _sentencepiece_unk, "llama3": _llama3, "qwen2": _qwen2}


def _backend(tok):
    """A ``tokenizers.Tokenizer`` (transformers' tokenizers wrap one)."""
    return getattr(tok, "backend_tokenizer", tok)


@pytest.fixture(scope="module", params=sorted(FORMS))
def pair(request, texts, tmp_path_factory):
    """(form, ours, tokenizers' own) for one tokenizer.json form, both read from the same file."""
    from tokenizers import Tokenizer

    from runtime.bpe import BPETokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(_backend(FORMS[request.param](texts)).to_str(pretty=True), encoding="utf-8")
    return request.param, BPETokenizer.from_file(path), Tokenizer.from_file(str(path))


def test_the_json_is_the_form_it_stands_for(pair):
    """Guards the fixtures: each file has the components its model family's tokenizer.json has."""
    form, ours, ref = pair
    spec = json.loads(ref.to_str())
    pre, norm, model = spec["pre_tokenizer"] or {}, spec["normalizer"] or {}, spec["model"]
    if form == "llama2_legacy":
        assert [n["type"] for n in norm["normalizers"]] == ["Prepend", "Replace"] and not spec["pre_tokenizer"]
        assert model["byte_fallback"] and "<0xE4>" in model["vocab"] and ours.prefix_ids == [1]
    elif form == "llama_transformers":
        assert pre == {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        assert model["byte_fallback"]
    elif form == "sentencepiece_unk":
        assert pre["type"] == "Metaspace" and pre["split"] and not model["byte_fallback"] and model["unk_token"]
    else:
        assert [p["type"] for p in pre["pretokenizers"]] == ["Split", "ByteLevel"]
        assert pre["pretokenizers"][0]["pattern"]["Regex"] == (LLAMA3_PATTERN if form == "llama3" else QWEN2_PATTERN)
        assert model["ignore_merges"] == (form == "llama3")
        assert (norm.get("type") == "NFC") == (form == "qwen2")


def test_ids_and_text_equal_tokenizers_on_hostile_text_and_reviews(pair, texts):
    form, ours, ref = pair
    fallbacks = 0
    for t in HOSTILE + texts[:40]:
        for special in (True, False):
            want = ref.encode(t, add_special_tokens=special).ids
            assert ours.encode(t, add_special_tokens=special) == want, (form, special, repr(t[:80]))
        ids = ref.encode(t).ids
        fallbacks += sum(ref.id_to_token(i).startswith("<0x") or ref.id_to_token(i) == "<unk>" for i in ids)
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), \
                (form, skip, repr(t[:80]))
    if form in ("llama2_legacy", "llama_transformers", "sentencepiece_unk"):
        assert fallbacks > 20  # the hostile text did go through byte fallback / unk


def test_every_token_decodes_like_tokenizers_alone_and_together(pair):
    form, ours, ref = pair
    every = list(range(ours.vocab_size))
    assert ours.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    for skip in (True, False):
        assert ours.decode(every, skip_special_tokens=skip) == ref.decode(every, skip_special_tokens=skip)
    assert [ours.decode([i], skip_special_tokens=False) for i in every] == \
        [ref.decode([i], skip_special_tokens=False) for i in every]


def test_the_gpt2_pattern_and_the_split_patterns_translate_to_the_same_pieces():
    """Python's re on the translated pattern cuts text where tokenizers' Split does (Oniguruma)."""
    from tokenizers import Regex, pre_tokenizers

    from runtime.bpe import GPT2_PATTERN, compile_pattern

    for pattern in (GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, r"\P{L}+|\p{Lu}\p{Ll}*|\d+|\x{2581}"):
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        regex = compile_pattern(pattern)
        for t in HOSTILE:
            want = [p for p, _ in split.pre_tokenize_str(t)]
            got = []
            prev = 0
            for m in regex.finditer(t):  # Isolated: matches and the text between them
                got += [t[prev:m.start()]] if m.start() > prev else []
                got.append(m[0])
                prev = m.end()
            got += [t[prev:]] if prev < len(t) else []
            assert got == want, (pattern[:30], repr(t[:60]))


@pytest.mark.parametrize("pattern, construct", [
    (r"\w+", r"\w"), (r"\p{Han}", r"\p{Han}"), (r"[[:alpha:]]", "[ inside [...] (nested class or POSIX bracket)"),
    (r"[\S]", r"\S inside [...]"), (r"[a-z&&[^aeiou]]", "&& (class intersection)"), (r"\bword", r"\b")])
def test_a_pattern_construct_without_an_exact_translation_is_refused_by_name(pattern, construct):
    import re

    from runtime.bpe import translate_pattern

    with pytest.raises(PreprocessError, match=rf"^tokenizer 'x': regex construct {re.escape(construct)} is not "
                                              r"supported by runtime\.bpe; expected \\p\{<general category>\}"):
        translate_pattern(pattern, "x")


def _minimal(**parts):
    spec = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}, "added_tokens": []}
    for key, value in parts.items():
        if key in ("type", "dropout", "continuing_subword_prefix"):
            spec["model"][key] = value
        else:
            spec[key] = value
    return spec


@pytest.mark.parametrize("part, value, message", [
    ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""}, "normalizer 'Precompiled'"),
    ("normalizer", {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "BertNormalizer"}]},
     "normalizer 'BertNormalizer'"),
    ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer 'Whitespace'"),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}]},
     "pre_tokenizer 'Digits'"),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Sideways"},
     "Split behavior 'Sideways'"),
    ("decoder", {"type": "WordPiece", "prefix": "##"}, "decoder 'WordPiece'"),
    ("post_processor", {"type": "Unknown"}, "post_processor 'Unknown'"),
    ("type", "WordPiece", "model type 'WordPiece'"),
    ("dropout", 0.1, "BPE dropout 0.1"),
    ("continuing_subword_prefix", "##", "BPE continuing_subword_prefix '##'"),
])
def test_a_component_outside_the_supported_forms_is_refused_naming_it(part, value, message):
    from runtime.bpe import BPETokenizer

    with pytest.raises(PreprocessError, match=rf"tokenizer 's': {message} is not supported by runtime\.bpe; expected"):
        BPETokenizer(_minimal(**{part: value}), "s")


def test_a_symbol_without_byte_fallback_or_unk_is_refused_not_dropped():
    from runtime.bpe import BPETokenizer

    tok = BPETokenizer(_minimal(), "s")
    assert tok.encode("abab") == [2, 2] and tok.decode([2, 0]) == "ab a"  # no decoder: tokens joined by spaces
    with pytest.raises(PreprocessError, match=r"symbol 'c' is not in the vocabulary and there is no byte fallback "
                                              "or unk token for it"):
        tok.encode("abc")
