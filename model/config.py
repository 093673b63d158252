"""Draft tree shapes: the dynamic EAGLE-2/3 tree and the static EAGLE-1 tree (a list of paths)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DynamicTree:
    """EAGLE-2/3: expand the top ``top_k`` children per node for ``depth`` levels after the root expansion, then
    keep the ``tree_size - 1`` most probable candidates (plus the root)."""

    top_k: int = 10
    depth: int = 7
    tree_size: int = 60

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.depth < 1:
            raise ValueError(f"top_k and depth must be at least 1, got top_k={self.top_k}, depth={self.depth}")
        candidates = self.top_k + self.depth * self.top_k**2
        if not 2 <= self.tree_size <= 1 + candidates:
            raise ValueError(
                f"tree_size must be in [2, {1 + candidates}] (the root plus top_k + depth * top_k**2 candidates), "
                f"got {self.tree_size}"
            )

    @property
    def max_depth(self) -> int:
        """D: levels drafted after the root expansion; a path holds at most D + 1 drafts."""
        return self.depth


@dataclass(frozen=True)
class StaticTree:
    """EAGLE-1: a fixed tree given as paths of child ranks, e.g. ``[[0], [1], [0, 0]]`` (the root's best and
    second-best children and the best child of the first). Every path's prefixes must be paths too."""

    choices: tuple[tuple[int, ...], ...]

    def __init__(self, choices: list[list[int]] | tuple[tuple[int, ...], ...]) -> None:
        paths = tuple(tuple(int(r) for r in path) for path in choices)
        if not paths or any(len(p) == 0 or min(p) < 0 for p in paths):
            raise ValueError("tree choices must be non-empty paths of non-negative child ranks")
        if len(set(paths)) != len(paths):
            raise ValueError("tree choices contain a path twice")
        missing = sorted({p[:-1] for p in paths if len(p) > 1} - set(paths))
        if missing:
            raise ValueError(f"tree choices lack the prefixes {[list(p) for p in missing]}")
        # Official order: by depth, then lexicographically; parents therefore precede their children.
        object.__setattr__(self, "choices", tuple(sorted(paths, key=lambda p: (len(p), p))))

    @property
    def tree_size(self) -> int:
        return 1 + len(self.choices)

    @property
    def max_depth(self) -> int:
        """D: the deepest path holds D + 1 drafts."""
        return max(len(p) for p in self.choices) - 1

    def parents(self) -> list[int]:
        """Tree index of each node's parent (``-1`` for the root at index 0)."""
        index = {p: i + 1 for i, p in enumerate(self.choices)}
        return [-1] + [index[p[:-1]] if len(p) > 1 else 0 for p in self.choices]


Tree = DynamicTree | StaticTree
