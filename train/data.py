"""Stage 1: collect the Python standard library's source files into a train/validation split.

Every `.py` file under the stdlib directory is a document, except those under a directory named `test`, `tests`
or `idle_test` (the test suites), `site-packages` (third-party code) or `__pycache__`, and the few files that are
not valid UTF-8. A file goes to validation when the first 8 hex digits of the SHA-256 of its path relative to the
stdlib directory (POSIX separators, e.g. `json/decoder.py`), read as an integer, are 0 modulo 20: whole modules,
about 5% of them, the same on every machine whatever the file order.

    python -m train.data [--stdlib DIR] [--out runs/data]

writes `train.jsonl` and `val.jsonl` (one `{"path", "text"}` object a line, sorted by path) and `split.json`
(the rule, the stdlib directory, file and byte counts, and the validation paths).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
VALIDATION_MODULUS = 20
HOLDOUT_RULE = (
    "a file is validation when int(sha256(relative POSIX path)[:8], 16) % 20 == 0; excluded: directories named "
    + ", ".join(sorted(EXCLUDED_DIRS))
    + ", and files that are not valid UTF-8"
)


@dataclass(frozen=True)
class Document:
    path: str
    text: str


def is_validation(relative_path: str) -> bool:
    """The holdout rule: a fixed ~5% of modules chosen by the hash of their relative path."""
    digest = hashlib.sha256(relative_path.encode()).hexdigest()
    return int(digest[:8], 16) % VALIDATION_MODULUS == 0


def collect(stdlib: Path) -> list[Document]:
    """All stdlib `.py` files outside the excluded directories, sorted by relative path."""
    documents = []
    for file in sorted(stdlib.rglob("*.py")):
        relative = file.relative_to(stdlib)
        if EXCLUDED_DIRS.intersection(relative.parts[:-1]) or not file.is_file():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        documents.append(Document(relative.as_posix(), text))
    return documents


def split(documents: list[Document]) -> tuple[list[Document], list[Document]]:
    train = [d for d in documents if not is_validation(d.path)]
    val = [d for d in documents if is_validation(d.path)]
    return train, val


def write_jsonl(documents: list[Document], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for d in documents:
            f.write(json.dumps({"path": d.path, "text": d.text}) + "\n")


def read_jsonl(path: Path) -> list[Document]:
    with path.open(encoding="utf-8") as f:
        return [Document(**json.loads(line)) for line in f]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    parser.add_argument("--out", type=Path, default=Path("runs/data"))
    args = parser.parse_args(argv)

    train, val = split(collect(args.stdlib))
    if not train or not val:
        raise SystemExit(f"{args.stdlib}: need files in both splits, found {len(train)} train and {len(val)} val")
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, args.out / "train.jsonl")
    write_jsonl(val, args.out / "val.jsonl")
    stats = {
        "stdlib": str(args.stdlib),
        "rule": HOLDOUT_RULE,
        "train": {"files": len(train), "bytes": sum(len(d.text.encode()) for d in train)},
        "val": {"files": len(val), "bytes": sum(len(d.text.encode()) for d in val)},
        "val_paths": [d.path for d in val],
    }
    (args.out / "split.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(
        f"data: {stats['train']['files']} train files ({stats['train']['bytes']:,} bytes), "
        f"{stats['val']['files']} val files ({stats['val']['bytes']:,} bytes) -> {args.out}"
    )


if __name__ == "__main__":
    main()
