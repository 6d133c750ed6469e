"""Monte Carlo Tree Search over chains of layers (CoLa, arXiv 2507.07996, section 3).

A chain is built left to right over the model's ``L`` layers with a cursor ``i`` (the next original layer).
At each step the actions are the paper's:

- ``skip k``: leave out layers ``i .. i+k-1`` (``k`` in ``1..max_block``);
- ``repeat k r``: append the block ``i .. i+k-1`` ``r`` times (``k, r`` in ``1..max_block``; ``r = 1`` keeps it);

and a chain is complete when the cursor reaches ``L`` (a chain that skipped everything is not allowed).
Chains longer than ``max_length`` are not generated.

One simulation: **select** from the root by UCB, ``Q/v + c sqrt(ln V / v) - lambda len(chain) / L`` (``V`` the
parent's visits, ``v`` the child's, the last term the paper's length penalty); a node that still has
unexplored actions expands a random one, and at a fully expanded node a random child replaces the UCB choice
with probability ``explore_probability`` (0.1, our reading of the paper's "random child" rule); **roll out**
from the new node with random actions to a complete chain; **evaluate** the chain's reward (rewards of chains
already seen are cached, not recomputed); **back up** the reward along the visited nodes.
``num_simulations`` (200 in the paper) bounds the reward evaluations. Seeded: the same seed, rewards and
arguments give the same search.
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
    cursor: int
    parent: _Node | None = None
    children: dict[tuple, _Node] = field(default_factory=dict)
    untried: list[tuple] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0


def actions(cursor: int, path_length: int, num_layers: int, max_block: int, max_length: int) -> list[tuple]:
    """The legal actions at ``cursor``: ``("skip", k)`` and ``("repeat", k, r)``."""
    legal = []
    for k in range(1, min(max_block, num_layers - cursor) + 1):
        if not (path_length == 0 and cursor + k == num_layers):  # skipping every layer leaves no chain
            legal.append(("skip", k))
        for r in range(1, max_block + 1):
            if path_length + k * r <= max_length:
                legal.append(("repeat", k, r))
    return legal


def apply(path: tuple[int, ...], cursor: int, action: tuple) -> tuple[tuple[int, ...], int]:
    if action[0] == "skip":
        return path, cursor + action[1]
    _, k, r = action
    return path + tuple(range(cursor, cursor + k)) * r, cursor + k


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
        explore_probability: chance of a random child instead of the UCB choice at a fully expanded node.
        seed: seed of the search's random choices. progress: show a tqdm bar.
    """
    for name, value in (("num_layers", num_layers), ("num_simulations", num_simulations), ("max_block", max_block)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    max_length = 2 * num_layers if max_length is None else max_length
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length!r}")
    rng = random.Random(seed)
    seen: dict[tuple[int, ...], float] = {}
    order: dict[tuple[int, ...], int] = {}

    def legal(path, cursor):
        return actions(cursor, len(path), num_layers, max_block, max_length)

    def evaluate(path: tuple[int, ...]) -> float:
        if path not in seen:
            seen[path] = float(reward(list(path)))
            order[path] = len(order)
        return seen[path]

    def ucb(child: _Node, parent_visits: int) -> float:
        return (child.value / child.visits + exploration * math.sqrt(math.log(parent_visits) / child.visits)
                - length_penalty * len(child.path) / num_layers)

    root = _Node((), 0, untried=legal((), 0))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_simulations, desc="mcts", leave=False)
    for _ in range(num_simulations):
        node = root
        while node.cursor < num_layers:  # selection and expansion
            if node.untried:
                action = node.untried.pop(rng.randrange(len(node.untried)))
                path, cursor = apply(node.path, node.cursor, action)
                child = _Node(path, cursor, parent=node, untried=legal(path, cursor) if cursor < num_layers else [])
                node.children[action] = child
                node = child
                break
            if rng.random() < explore_probability:
                node = rng.choice(list(node.children.values()))
            else:
                node = max(node.children.values(), key=lambda c: ucb(c, node.visits))
        path, cursor = node.path, node.cursor
        while cursor < num_layers:  # random rollout
            options = legal(path, cursor)
            if not options:
                break
            path, cursor = apply(path, cursor, rng.choice(options))
        value = evaluate(path) if cursor == num_layers and path else 0.0
        while node is not None:  # back-up
            node.visits += 1
            node.value += value
            node = node.parent
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    if not seen:
        raise RuntimeError("the search evaluated no complete chain: raise num_simulations or max_length")
    best = max(seen, key=lambda p: (seen[p], -len(p), -order[p]))
    return SearchResult(list(best), seen[best], dict(seen), evaluations=len(seen), simulations=num_simulations,
                        layers_saved=int(getattr(reward, "layers_saved", 0)))
