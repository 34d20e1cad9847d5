"""Pareto fronts of (quality, cost) points: the trade-offs no other point beats on both.

Quality is higher-is-better, cost lower-is-better (orient other metrics by negating them before
calling). Point ``p`` *dominates* ``q`` when ``p.quality >= q.quality`` and ``p.cost <= q.cost``
with at least one of the two strict; the front is the set of points no input point dominates.
Identical points do not dominate each other: all copies are on the front, or none. Pure
functions of their arguments; this module imports nothing of the ML stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["Point", "behind", "dominates", "pareto_front"]

Point = tuple[float, float]  # (quality: higher is better, cost: lower is better)


def dominates(p: Point, q: Point) -> bool:
    """Whether ``p`` is at least as good as ``q`` on both axes and better on one."""
    return p[0] >= q[0] and p[1] <= q[1] and (p[0] > q[0] or p[1] < q[1])


def pareto_front(points: Sequence[Point]) -> tuple[int, ...]:
    """Indices (ascending) of the points that no point of ``points`` dominates.

    One sweep in order of cost (then quality, descending): a point is on the front when its
    quality beats every cheaper-or-equal point before it, or when it equals the point that set
    the best quality so far exactly (a tie). O(n log n).

    Raises
    ------
    ValueError
        If a coordinate is NaN or infinite: such a point has no place on a trade-off.
    """
    for i, (quality, cost) in enumerate(points):
        if not (math.isfinite(quality) and math.isfinite(cost)):
            raise ValueError(f"point {i} = ({quality}, {cost}): coordinates must be finite")
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    front: list[int] = []
    best: Point | None = None
    for i in order:
        if best is None or points[i][0] > best[0]:
            front.append(i)
            best = points[i]
        elif points[i] == best:
            front.append(i)
    return tuple(sorted(front))


def behind(
    point: Point, others: Sequence[Point], margin: float = 0.0, *, eps: float = 1e-12
) -> int | None:
    """The index of the best point of ``others`` that beats ``point`` by more than ``margin``.

    ``other`` beats ``point`` when ``other.cost <= point.cost`` and
    ``other.quality > point.quality + margin`` (beyond ``eps``, the gate's float tolerance).
    Of those, the one of highest quality (then lowest cost, then first); None when there is
    none. Some point of the front of ``others`` beats ``point`` exactly when any of ``others``
    does (a point beaten by no front point is beaten by no point), so this is the question "is
    ``point`` more than ``margin`` behind the front of ``others``?".
    """
    beating = [
        i
        for i, (quality, cost) in enumerate(others)
        if cost <= point[1] and quality - margin > point[0] + eps
    ]
    if not beating:
        return None
    return min(beating, key=lambda i: (-others[i][0], others[i][1], i))
