"""A message's blocks judged together (`ServerCore.on_push_many` / `on_pull_many`, the groups of blocks that
share their state) follow the per-block rules: against a second core fed the same messages one block at a
time, in the order of the message's parts, every block sees the same actions and ends in the same state.

Exactly so where no server-wide figure moves inside a message. Those figures are auto's k and τ, grace's
round period and lateness, SSP's clocks and the staleness average. A part reads them as they stand when
it is judged, where block by block the part's later blocks would read them after its first block's
update. So the exact comparison runs the modes without grace and without auto (an Apply's `staleness` is
left out). With them, the second test checks the invariants of every block on random messages.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weaksync.core import make_policy
from weaksync.core.actions import Accept, Apply, Drop, EndRun, Finished, Send
from weaksync.core.server import ServerCore

MODES = ("bsp", "backup", "partial-pull", "partial", "async")
BLOCKS = (0, 2, 3, 5, 6, 8)  # one server's share of B = 9: not 0..n, as in a real layout


def per_block(actions: list[Any]) -> tuple[dict[int, list[Any]], set[int], list[Any]]:
    """Actions by block (a group's action once per member, as a one-block action), the workers told the run
    is over (Finished, or everyone on EndRun), and the rest."""
    by_block: dict[int, list[Any]] = defaultdict(list)
    finished: set[int] = set()
    other: list[Any] = []
    for a in actions:
        if isinstance(a, (Accept, Drop, Send, Apply)):
            for j in a.blocks:
                fields = {**a.__dict__, "blocks": (j,)}
                if isinstance(a, Apply):
                    fields["staleness"] = None  # the average after the whole part: see the module's docstring
                by_block[j].append(type(a)(**fields))
        elif isinstance(a, Finished):
            finished.add(a.worker)
        elif isinstance(a, EndRun):
            finished.add(-1)
        else:
            other.append(a)
    return by_block, finished, other


def state_of(core: ServerCore, j: int) -> tuple:
    s = core.blocks[j]
    return (s.version, dict(s.contributors), dict(s.parked), s.gradients, s.round_deadline, s.grace_deadline,
            s.cut_deadline, dict(s.fresh), set(s.behind), set(s.riders), s.quorum_time, s.last_apply)  # fmt: skip


def totals(core: ServerCore) -> tuple:
    return (dict(core.drops), dict(core.accepted), dict(core.dropped), core.updates, core.folded,
            core.gradients_applied, core.staleness, core.period, list(core.late_after_quorum), core.k, core.tau,
            dict(core.clocks), core.steps_total, core.ended, [c.value for c in core.choices])  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.sampled_from(MODES), st.integers(2, 4), st.booleans())
def test_a_message_judged_by_groups_equals_its_blocks_one_at_a_time(
    seed: int, mode: str, n: int, deadline: bool
) -> None:
    rng = random.Random(seed)
    policy = make_policy(mode, n, 9, push_deadline=0.05 if deadline else None, grace=None)
    grouped = ServerCore(policy, BLOCKS, budget=rng.choice([None, 60]))
    single = ServerCore(policy, BLOCKS, budget=grouped.budget)
    steps = [0] * n
    now = 0.0
    for _ in range(120):
        now += rng.choice([0.0, 0.001, 0.004, 0.02])
        w = rng.randrange(n)
        kind = rng.random()
        if kind < 0.08:
            a, b = grouped.on_timer(now), single.on_timer(now)
        elif kind < 0.1:
            a, b = grouped.worker_left(w, now), single.worker_left(w, now)
        else:
            blocks = list(BLOCKS) if rng.random() < 0.7 else rng.sample(BLOCKS, rng.randint(1, len(BLOCKS)))
            if rng.random() < 0.05:
                blocks.append(blocks[0])  # a block twice
            shift = rng.choice([0, 0, 0, 1, 2])
            values = tuple(
                max(-1, grouped.version(j) - (shift if rng.random() < 0.85 else rng.choice([0, 1, 3]))) for j in blocks
            )
            if kind < 0.55:
                bases = tuple(max(0, v) for v in values)
                problems = tuple("malformed" if rng.random() < 0.02 else None for _ in blocks)
                order = ordered(grouped, blocks, bases, problems)
                a = grouped.on_push_many(w, tuple(blocks), bases, steps[w], now, problems)
                b = [x for i in order for x in single.on_push(w, blocks[i], bases[i], steps[w], now, problems[i])]
                steps[w] += 1
            else:
                order = ordered(grouped, blocks, values, None)
                a = grouped.on_pull_many(w, tuple(blocks), values, steps[w], now)
                b = [x for i in order for x in single.on_pull(w, blocks[i], values[i], steps[w], now)]
        ga, fa, oa = per_block(a)
        gb, fb, ob = per_block(b)
        assert ga == gb, f"seed {seed}: per-block actions differ"
        assert fa == fb and sorted(map(repr, oa)) == sorted(map(repr, ob))
        for j in BLOCKS:
            assert state_of(grouped, j) == state_of(single, j), f"seed {seed}: block {j}"
        assert totals(grouped) == totals(single)
        assert grouped.next_deadline() == single.next_deadline()


def ordered(core: ServerCore, blocks: list[int], values: tuple[int, ...], problems: tuple | None) -> list[int]:
    """The message's positions in the order the grouped core takes them: part by part (blocks of one group
    with one base or want and verdict), each part in its first block's place. A block twice: as sent."""
    if len(set(blocks)) < len(blocks):
        return list(range(len(blocks)))
    parts: dict[tuple, list[int]] = {}
    for i, j in enumerate(blocks):
        key = (id(core.blocks[j]), values[i], problems[i] if problems else None)
        parts.setdefault(key, []).append(i)
    return [i for part in parts.values() for i in sorted(part, key=lambda i: blocks[i])]


def test_a_server_s_blocks_stay_one_group_while_messages_carry_them_together() -> None:
    """The point of groups: a run whose pushes and pulls carry a server's whole share judges it once per
    message (one Accept, one Apply, one Send per worker), and a message that carries a part splits it."""
    core = ServerCore(make_policy("bsp", 2, 9), BLOCKS)
    for w in (0, 1):
        assert core.on_pull_many(w, BLOCKS, (-1,) * 6, 0, 0.0) == [Send(w, BLOCKS, 0)]
    actions = core.on_push_many(0, BLOCKS, (0,) * 6, 0, 0.1) + core.on_push_many(1, BLOCKS, (0,) * 6, 0, 0.1)
    assert [type(a) for a in actions] == [Accept, Accept, Apply]
    assert len(core.groups) == 1
    core.on_push_many(0, (0, 2), (1, 1), 1, 0.2)
    assert [s.members for s in core.groups] == [(0, 2), (3, 5, 6, 8)]
    assert core.version(0) == core.version(8) == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32 - 1), st.sampled_from(("auto", "backup", "partial", "partial-pull", "ssp")), st.integers(2, 4)
)
def test_messages_judged_by_groups_keep_every_block_s_invariants(seed: int, mode: str, n: int) -> None:
    """auto, grace and SSP on random messages: each block's version counts the Applies naming it, an Apply
    names each contributor once (at least one, at most N), versions never go back, and k stays in bounds."""
    rng = random.Random(seed)
    core = ServerCore(make_policy(mode, n, 9), BLOCKS)
    applies = dict.fromkeys(BLOCKS, 0)
    steps = [0] * n
    now = 0.0
    for _ in range(150):
        now += rng.choice([0.0, 0.001, 0.004, 0.02])
        before = {j: core.version(j) for j in BLOCKS}
        w = rng.randrange(n)
        blocks = list(BLOCKS) if rng.random() < 0.7 else rng.sample(BLOCKS, rng.randint(1, len(BLOCKS)))
        values = tuple(max(0, core.version(j) - rng.choice([0, 0, 0, 1, 2])) for j in blocks)
        roll = rng.random()
        if roll < 0.1:
            actions = core.on_timer(now)
        elif roll < 0.55:
            actions = core.on_push_many(w, tuple(blocks), values, steps[w], now)
            steps[w] += 1
        else:
            actions = core.on_pull_many(w, tuple(blocks), tuple(v - 1 for v in values), steps[w], now)
        for a in actions:
            if isinstance(a, Apply):
                workers = [c[0] for c in a.contributors]
                assert 1 <= len(workers) == len(set(workers)) <= n
                for j in a.blocks:
                    applies[j] += 1
                    assert a.version <= core.version(j)
        assert all(core.version(j) == applies[j] >= before[j] for j in BLOCKS)
        assert core.policy.k_min <= core.k <= n
