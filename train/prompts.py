"""Held-out prompts for the demo and the acceptance benchmark, cut from the validation modules.

    python -m train.prompts [--data runs/data] [--out model/default/prompts.json] [--count 16] [--chars 600]

Each prompt is the text of a validation module from the start of one of its top-level ``def`` or ``class``
lines, ``--chars`` characters long and cut at a line end: code the target never saw, where it has to continue
a definition. Modules are taken in path order, one prompt each, skipping those with no such line and the
generated codec tables under ``encodings/`` (repetitive tables would flatter the acceptance length).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from train.data import read_jsonl


def prompt_from(text: str, chars: int) -> str | None:
    """The module from its first top-level definition that leaves ``chars`` characters, cut at a line end."""
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.startswith(("def ", "class ")) and len(text) - offset >= chars:
            window = text[offset : offset + chars]
            return window[: window.rfind("\n") + 1]
        offset += len(line)
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--out", type=Path, default=Path("model/default/prompts.json"))
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--chars", type=int, default=600)
    args = parser.parse_args(argv)
    prompts = []
    for document in read_jsonl(args.data / "val.jsonl"):
        if document.path.startswith("encodings/"):
            continue
        prompt = prompt_from(document.text, args.chars)
        if prompt:
            prompts.append({"module": document.path, "text": prompt})
        if len(prompts) == args.count:
            break
    args.out.write_text(json.dumps(prompts, indent=1) + "\n")
    print(f"{len(prompts)} prompts from {[p['module'] for p in prompts]} -> {args.out}")


if __name__ == "__main__":
    main()
