#!/usr/bin/env python3
"""Reference tokenizations of SmolLM2-135M-Instruct's GGUF tokenizer (../shared) for
tests/test_tokenizer_gguf.c, made with transformers' own GGUF loader.

    /opt/tuna-venv/bin/python tests/gen_gguf_tok_fixtures.py [SHARED_DIR] [OUT_FILE]

Writes OUT_FILE (tests/fixtures/smollm2_tok.jsonl by default), one JSON line per (text,
add_special_tokens): {"text", "add_special", "ids", "decoded", "decoded_skip"} (decode with
skip_special_tokens off and on) and, where it differs, "hf_gguf_ids".

The file's tokenizer.ggml.pre is "smollm": SmolLM2's own tokenizer.json splits digits one by one
(Digits individual_digits) before GPT-2's byte-level regex, and llama.cpp's "smollm" does the
same. transformers 5.25's GGUF converter does not know the name and keeps GPT-2's regex alone,
which differs on whitespace before a digit ("a  1": "ĠĠ","1" against "Ġ","Ġ","1"...). The
expected ids are therefore transformers' GGUF tokenizer with SmolLM2's pre-tokenizer restored;
"hf_gguf_ids" records what the unpatched converter gives where that differs."""
import json
import os
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "fixtures", "smollm2_tok.jsonl")
FOLDER = os.path.join(SHARED, "models", "smollm2-135m-instruct")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EXTRA = [
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; i++) { printf(\"%d\\n\", i); }",
    "x = [1, 2, 3]; y = {'a': 1.5e-3, \"b\": None}  # comment",
    "3.14159265358979323846264338327950288419716939937510",
    "12345678901234567890 and 1,000,000.00 and 2024-12-04 and 0x1F",
    "a  1 b   22 c\t3 d\n4  \n  5",
    "Phone: +1 (555) 123-4567, ext. 89",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "Mixed: naïve café Ünïcödé — “quotes” ‘single’ … ½ ² ³ ¹",
    "   leading and trailing spaces   ",
    "tabs\t\tand\t\t\ttabs",
    "line1\nline2\n\nline4\r\nline5\r\n\r\n",
    "\n\n\n",
    " ",
    "",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n",
    "<|im_start|>user\nHi<|im_end|><|im_start|>assistant\n",
    "text<|endoftext|>more<repo_name>x<file_sep>y<|im_end|>",
    "<|im_start|> spaced <|im_end|>  <|im_start|>",
    "<|im_start",
    "I'm sure they'll say it's what we've done, won't they? I'D SAY YOU'RE RIGHT.",
    "https://example.com/path?query=1&x=2#frag user@example.org",
    "ÄÖÜ äöü ß ÀÉÎÕÛ ñ ç œ æ ø å",
    "Ελληνικά Русский текст עברית العربية हिन्दी ไทย",
    "  \u00a0non-breaking\u2003em space\u3000ideographic",
    "$$ \\frac{a}{b} = \\sum_{i=1}^{n} x_i^2 $$",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "1 2 3 4 5 6 7 8 9 10 11 12 100 1000 10000 100000",
]


def main():
    tok = AutoTokenizer.from_pretrained(FOLDER, gguf_file=GGUF)
    raw = json.loads(tok.backend_tokenizer.to_str())
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    hf = AutoTokenizer.from_pretrained(FOLDER, gguf_file=GGUF)
    assert raw["pre_tokenizer"]["type"] == "ByteLevel", raw["pre_tokenizer"]
    texts = []
    with open(os.path.join(SHARED, "tokenizers", "reference_public.jsonl")) as f:
        for line in f:
            t = json.loads(line)["text"]
            if t not in texts:
                texts.append(t)
    texts += [t for t in EXTRA if t not in texts]
    n_diff = 0
    with open(OUT, "w") as f:
        for text in texts:
            for add in (False, True):
                ids = tok(text, add_special_tokens=add).input_ids
                rec = {
                    "text": text,
                    "add_special": add,
                    "ids": ids,
                    "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_skip": tok.decode(ids, skip_special_tokens=True),
                }
                hf_ids = hf(text, add_special_tokens=add).input_ids
                if hf_ids != ids:
                    rec["hf_gguf_ids"] = hf_ids
                    n_diff += 1
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{OUT}: {len(texts)} texts x 2; unpatched transformers GGUF differs on {n_diff}")


if __name__ == "__main__":
    main()
