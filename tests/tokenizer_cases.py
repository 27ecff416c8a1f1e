"""Shared test inputs for the tokenizer tests: edge-case strings and paths to the bundled data."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GPT2_ENCODER = DATA / "gpt2" / "encoder.json"
GPT2_VOCAB_BPE = DATA / "gpt2" / "vocab.bpe"
BERT_VOCAB = DATA / "bert" / "vocab.txt"
SHAKESPEARE = REPO / "foundations" / "data" / "corpora" / "tinyshakespeare" / "input.txt"

EDGE_CASES = [
    "", " ", "  ", "     ", "\n", "\n\n\n", " \n \n ", "\t", "\t\t x", "\r\n\r\n",
    "   leading spaces", "trailing spaces   ", "a  b   c    d     e", "x\n\n\n\ny",
    " " * 20 + "x", "  \n  \n", "line one\nline two\n\n  indented\n",
    "Hello, world!", "Hello world", "don't you'll I'M we've they're 's 'S",
    "café naïve résumé Ångström façade", "e\u0301 (combining accent) vs é",
    "日本語のテキストです。", "中文字符测试，标点！", "한국어 텍스트", "Привет мир", "Ελληνικά",
    "العربية עברית", "mixed: abcДЖЯ中文🎉123ü",
    "🎉", "👍🏽 👨‍👩‍👧‍👦 🇯🇵 emoji", "😀😃😄😁😆",
    "0", "1234567890", "3.14159 1,000,000 2024-01-01 0x1F 1e-9", "  42  ", "٣٤٥ Arabic-Indic digits",
    "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c[i] = d->e; }\n",
    "for i in range(10):\n\tprint(i)\n", "<html><body class=\"x\">&amp;</body></html>",
    "https://example.com/path?q=1&r=2#frag", "$ ls -la | grep '.py' > out.txt",
    "a" * 300, "supercalifragilisticexpialidocious" * 4, "ab" * 150 + " " + "xyz" * 50,
    "\u00a0non\u00a0breaking\u00a0spaces", "zero\u200bwidth", "<|endoftext|>", "<|endoftext|> after",
    "\x00\x01\x7f control chars", "tab\tseparated\tvalues\n", "MiXeD CaSe WORDS", "...!!!???",
    "—dashes– and “quotes” ‘single’", "∑∫√∞ ≤≥ math", "\U0001F600\U0010FFFF plane edges",
]
