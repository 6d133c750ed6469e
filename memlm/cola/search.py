"""Monte Carlo Tree Search over chains of layers (CoLa, arXiv 2507.07996, section 3).

Every node of the tree is a complete chain; the root is the full model, ``[0, 1, ..., L-1]``. A node's
children are the chains one action away, the paper's actions applied at any position ``i`` of the chain:

- ``skip k``: drop the block ``chain[i : i+k]`` (``k`` in ``1..max_block``);
- ``repeat k r``: follow the block ``chain[i : i+k]`` by ``r`` more copies of it (``k, r`` in ``1..max_block``);

keeping chains of ``1..max_length`` layers, each chain at most once in the whole tree.

One simulation (after the authors' released search): **select** from the root, among the children not yet
fully explored, the one with the largest ``Q/v + c sqrt(ln V / v) - lambda len(chain) / L`` (``V`` the
parent's visits, ``v`` the child's; the last term is the paper's length penalty, lambda = 5; a child never
visited has no score), or with probability ``explore_probability`` (0.1) a random one; if the reached chain
has no reward yet, **evaluate** it, otherwise **expand** it (create all its children) and evaluate a random
child; **back up** the reward to the root. ``num_simulations`` (200 in the paper) bounds the reward
evaluations, the root's included; rewards are never recomputed.
Seeded: the same seed, rewards and arguments give the same search.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    """``best_path``: the highest-reward chain (ties: the shorter, then the earlier found); ``rewards``: every
    evaluated chain's reward; ``evaluations``: reward calls; ``layers_saved``: layer evaluations that prefix
    reuse avoided (from the reward, when it reports them)."""

    best_path: list[int]
    best_reward: float
    rewards: dict[tuple[int, ...], float] = field(default_factory=dict)
    evaluations: int = 0
    simulations: int = 0
    layers_saved: int = 0


@dataclass
class _Node:
    path: tuple[int, ...]
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    fully_explored: bool = False


def neighbours(path: tuple[int, ...], max_block: int, max_length: int) -> list[tuple[int, ...]]:
    """The chains one action away from ``path``: every ``skip k`` and ``repeat k r`` at every position."""
    found = []
    for i in range(len(path)):
        for k in range(1, min(max_block, len(path) - i) + 1):
            block = path[i : i + k]
            skipped = path[:i] + path[i + k :]
            if skipped:
                found.append(skipped)
            for r in range(1, max_block + 1):
                if len(path) + k * r <= max_length:
                    found.append(path[:i] + block * (r + 1) + path[i + k :])
    return found


def mcts(
    reward: Callable[[Sequence[int]], float],
    num_layers: int,
    num_simulations: int = 200,
    max_block: int = 4,
    max_length: int | None = None,
    exploration: float = math.sqrt(2),
    length_penalty: float = 5.0,
    explore_probability: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> SearchResult:
    """Search chains of ``num_layers`` layers for the highest ``reward(path)`` (see the module notes).

    Args:
        reward: maps a chain (list of layer indices) to a score in [0, 1].
        num_layers: layers of the model. num_simulations: the budget of simulations (>= 1).
        max_block: the largest ``k`` and ``r``. max_length: the longest chain (default ``2 * num_layers``).
        exploration: UCB constant ``c``. length_penalty: ``lambda`` (the paper's 5, over ``num_layers``).
        explore_probability: chance of a random child instead of the UCB choice.
        seed: seed of the search's random choices. progress: show a tqdm bar.
    """
    for name, value in (("num_layers", num_layers), ("num_simulations", num_simulations), ("max_block", max_block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    max_length = 2 * num_layers if max_length is None else max_length
    if max_length < num_layers:
        raise ValueError(f"max_length={max_length!r} must be at least num_layers={num_layers} (the full chain)")
    rng = random.Random(seed)
    rewards: dict[tuple[int, ...], float] = {}
    in_tree: set[tuple[int, ...]] = set()

    def evaluate(path: tuple[int, ...]) -> float:
        if path not in rewards:
            rewards[path] = float(reward(list(path)))
        return rewards[path]

    def ucb(child: _Node, parent_visits: int) -> float:
        if child.visits == 0:  # reached only through the random choice (as in the authors' search)
            return -math.inf
        return (child.value / child.visits + exploration * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)
                - length_penalty * len(child.path) / num_layers)

    root = _Node(tuple(range(num_layers)))
    in_tree.add(root.path)
    evaluate(root.path)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_simulations, desc="mcts", leave=False)
    for _ in range(num_simulations - 1):  # the root's evaluation is the first of the budget
        node = root
        while node.children:  # selection
            open_children = [c for c in node.children if not c.fully_explored]
            if not open_children:
                break
            if rng.random() < explore_probability:
                node = rng.choice(open_children)
            else:
                node = max(open_children, key=lambda c, parent=node: ucb(c, parent.visits))
        if node.path in rewards and not node.fully_explored and not node.children:  # expansion
            for path in neighbours(node.path, max_block, max_length):
                if path not in in_tree:
                    in_tree.add(path)
                    node.children.append(_Node(path, parent=node))
            if node.children:
                node = rng.choice(node.children)
            else:
                node.fully_explored = True
        value = evaluate(node.path)
        while node is not None:  # back-up
            node.visits += 1
            node.value += value
            if node.children and all(c.fully_explored for c in node.children):
                node.fully_explored = True
            node = node.parent
        if bar is not None:
            bar.update()
        if root.fully_explored:
            break
    if bar is not None:
        bar.close()
    order = {path: i for i, path in enumerate(rewards)}
    best = max(rewards, key=lambda p: (rewards[p], -len(p), -order[p]))
    return SearchResult(list(best), rewards[best], dict(rewards), evaluations=len(rewards), simulations=num_simulations,
                        layers_saved=int(getattr(reward, "layers_saved", 0)))
