"""Stage 2: train a byte-level BPE tokenizer on the training split and write both splits as token ids.

    python -m train.tokenizer [--data runs/data] [--vocab-size 8192] [--tokenizer-out model/default/target]

The tokenizer (GPT-2 style byte-level BPE, one special token `<|endoftext|>` that is BOS, EOS and padding) is
trained on the training split only and saved as a `transformers` tokenizer, so `AutoTokenizer.from_pretrained`
reads it offline. Each split is written to `<data>/{train,val}.bin` as raw little-endian uint16 ids: every file
encoded in path order, each followed by `<|endoftext|>`. `<data>/tokens.json` records the counts.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from train.data import Document, read_jsonl

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_pretrained(tokenizer: Tokenizer, out: Path, max_length: int) -> None:
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=max_length,
    )
    wrapped.save_pretrained(str(out))


def encode(tokenizer: Tokenizer, documents: list[Document]) -> np.ndarray:
    """Token ids of all documents, each followed by `<|endoftext|>`, as one uint16 array."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    encodings = tokenizer.encode_batch([d.text for d in documents])
    parts = [np.array([*e.ids, eot], dtype=np.uint16) for e in encodings]
    return np.concatenate(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--max-length", type=int, default=2048, help="model_max_length written to the tokenizer")
    parser.add_argument("--tokenizer-out", type=Path, default=Path("model/default/target"))
    args = parser.parse_args(argv)
    if args.vocab_size > 2**16:
        raise SystemExit(f"--vocab-size {args.vocab_size}: ids are stored as uint16, so at most 65536")

    start = time.perf_counter()
    train_docs = read_jsonl(args.data / "train.jsonl")
    val_docs = read_jsonl(args.data / "val.jsonl")
    tokenizer = train_tokenizer([d.text for d in train_docs], args.vocab_size)
    args.tokenizer_out.mkdir(parents=True, exist_ok=True)
    save_pretrained(tokenizer, args.tokenizer_out, args.max_length)

    counts = {}
    for name, docs in (("train", train_docs), ("val", val_docs)):
        ids = encode(tokenizer, docs)
        ids.astype("<u2").tofile(args.data / f"{name}.bin")
        counts[name] = {"tokens": int(ids.size), "bytes_per_token": sum(len(d.text.encode()) for d in docs) / ids.size}
    meta = {"vocab_size": tokenizer.get_vocab_size(), "end_of_text": tokenizer.token_to_id(END_OF_TEXT), **counts}
    (args.data / "tokens.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"tokenizer: vocab {meta['vocab_size']} -> {args.tokenizer_out}; "
        f"train {counts['train']['tokens']:,} tokens ({counts['train']['bytes_per_token']:.2f} bytes/token), "
        f"val {counts['val']['tokens']:,} tokens; {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
