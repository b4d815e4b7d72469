"""Shipped straggler scenarios load, are cited and act at the default scale; user files load or fail in one line."""

from __future__ import annotations

import numpy as np
import pytest

from weaksync.stragglers.delays import FailSlowDelay, TraceDelay, delayer_for
from weaksync.stragglers.scenarios import SCENARIO_DIR, Scenario, list_scenarios, load_scenario

SHIPPED = [
    "baseline-jitter",
    "fail-slow",
    "lognormal-chen2016",
    "pareto-dolly",
    "shifted-exp",
    "slow-server",
    "slow-server-window",
    "slow-worker-moves",
    "slow-worker-x2",
    "slow-worker-x4",
    "spike-burst",
    "spikes",
    "spikes-5pct",
]


def test_list_scenarios_matches_the_shipped_files():
    assert SCENARIO_DIR.is_dir() and SCENARIO_DIR.parent.name == "weaksync"  # package data, next to the code
    assert list_scenarios() == sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
    assert list_scenarios() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_loads_and_is_cited(name):
    s = load_scenario(name)
    assert isinstance(s, Scenario)
    assert s.name == name
    assert s.source.strip() and s.description.strip() and s.stragglers
    header = []
    for line in (SCENARIO_DIR / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert len(header) >= 5, "a scenario file opens with a comment block citing its source and its numbers"
    assert load_scenario(str(SCENARIO_DIR / f"{name}.yaml")) == s  # the same file by path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_is_visible_at_the_default_scale(name):
    """4 workers, 2 servers, ~7 ms compute, 2000 steps over 5 s: some role gets >= 1 ms extra per step on average,
    none is absurd."""
    rules = load_scenario(name).stragglers
    delayers = [delayer_for(rules, "worker", w, 0) for w in range(4)]
    delayers += [delayer_for(rules, "server", s, 0) for s in range(2)]
    delayers += [delayer_for(rules, "link", w, 0, peer=s) for w in range(4) for s in range(2)]
    assert any(d.active for d in delayers)
    means = [
        np.mean([d.sample(step, measured=0.007, nbytes=100_000, elapsed=step * 0.0025) for step in range(2000)])
        for d in delayers
    ]
    assert max(means) >= 0.001
    assert max(means) < 0.1  # the default 300-step run stays well under a minute


def test_fail_slow_and_slow_server_target_one_instance():
    fs = load_scenario("fail-slow").stragglers
    assert [r.ids for r in fs] == [[1]] and isinstance(fs[0].delay, FailSlowDelay)
    assert not delayer_for(fs, "worker", 0, 0).active and delayer_for(fs, "worker", 1, 0).active
    ss = load_scenario("slow-server").stragglers
    assert delayer_for(ss, "server", 1, 0).sample(0, measured=0.001) == pytest.approx(0.045)
    assert not delayer_for(ss, "server", 0, 0).active


def test_unknown_scenario_lists_the_choices():
    with pytest.raises(ValueError) as info:
        load_scenario("spikez")
    msg = str(info.value)
    assert msg == f"unknown scenario 'spikez': choose one of {', '.join(SHIPPED)}, or pass a path to a YAML file"
    with pytest.raises(ValueError, match="unknown scenario 'missing/file.yaml': choose one of baseline-jitter"):
        load_scenario("missing/file.yaml")


USER = """\
# my own scenario
description: worker 0 slow for a while, links to server 1 at 10 MB/s
source: my cluster
stragglers:
  - target: worker
    ids: 0
    start_step: 10
    end_step: 20
    delay: {kind: constant, factor: 3}
  - target: link
    servers: [1]
    bandwidth: 10.0e+6
"""


def test_a_user_yaml_path_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(USER)
    s = load_scenario(str(path))
    assert s.name == "mine"  # defaults to the file name
    assert s.stragglers[0].ids == [0] and s.stragglers[1].bandwidth == 10e6
    assert load_scenario(path) == s  # a Path works too
    w0 = delayer_for(s.stragglers, "worker", 0, 0)
    assert [w0.sample(step, measured=0.01) for step in (9, 10, 19, 20)] == [0.0, 0.02, 0.02, 0.0]
    assert delayer_for(s.stragglers, "link", 3, 0, peer=1).sample(0, nbytes=1_000_000) == pytest.approx(0.1)


def test_relative_trace_paths_are_relative_to_the_scenario_file(tmp_path, monkeypatch):
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "w.csv").write_text("delay\n0.5\n0.25\n")
    path = tmp_path / "traced.yaml"
    path.write_text(
        "name: traced\nstragglers:\n  - target: worker\n    delay: {kind: trace, path: traces/w.csv, loop: false}\n"
    )
    monkeypatch.chdir(tmp_path / "traces")  # elsewhere: the path must not depend on the current directory
    s = load_scenario(str(path))
    assert isinstance(s.stragglers[0].delay, TraceDelay)
    d = delayer_for(s.stragglers, "worker", 0, 0)
    assert [d.sample(i) for i in range(3)] == [0.5, 0.25, 0.0]


@pytest.mark.parametrize(
    "text,needle",
    [
        (
            "stragglers:\n  - target: worker\n    delay: {kind: constant, factr: 2}\n",
            "stragglers[0].delay.factr: unknown field: use one of kind, factor, seconds, base",
        ),
        (
            "stragglers:\n  - target: worker\n    idz: [1]\n    delay: {kind: constant}\n",
            "stragglers[0].idz: unknown field: use one of target, ids, servers",
        ),
        ("name: x\nstraglers: []\n", "straglers: unknown field: use one of name, description, source, stragglers"),
        (
            "stragglers:\n  - target: worker\n    delay: {kind: shifted-exp, mean: -1}\n",
            "stragglers[0].delay.mean: Input should be greater than 0",
        ),
        (
            "stragglers:\n  - target: worker\n    delay: {kind: gamma}\n",
            "stragglers[0].delay.kind: unknown kind 'gamma': use one of constant, shifted-exp",
        ),
        (
            "stragglers:\n  - target: worker\n    delay: {seconds: 1}\n",
            "stragglers[0].delay.kind: missing kind: use one of constant",
        ),
        (
            "stragglers:\n  - target: worker\n    bandwidth: 5\n",
            "stragglers[0]: bandwidth applies to links only: set target: link",
        ),
        (
            "stragglers:\n  - {target: worker, delay: {kind: constant}}\n  - {target: server}\n",
            "stragglers[1]: a rule needs a delay or a bandwidth",
        ),
        ("stragglers:\n  - target: gpu\n    delay: {kind: constant}\n", "stragglers[0].target: Input should be"),
        (
            "stragglers:\n  - target: worker\n    ids: [a]\n    delay: {kind: constant}\n",
            "stragglers[0].ids: use all, one id, or a list of ids >= 0 such as [0, 2]",
        ),
        ("stragglers: [\n", "line 2 is not valid YAML: fix its syntax"),
        ("- target: worker\n", "must hold a mapping with name, description, source, stragglers"),
        (
            "stragglers:\n  - target: worker\n    delay: {kind: trace, path: nope.csv}\n",
            "stragglers[0].delay: trace file",
        ),
    ],
)
def test_a_bad_user_file_gives_one_line_naming_the_file_and_field(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_scenario(str(path))
    msg = str(info.value)
    assert msg.startswith(f"scenario file '{path}'")
    assert needle in msg
    assert "\n" not in msg


def test_the_changing_scenarios_change_during_the_run():
    """The three time-windowed scenarios (seconds into the run, not steps: a slow worker reaches a step later)."""
    moves = load_scenario("slow-worker-moves").stragglers
    w1, w2 = delayer_for(moves, "worker", 1, 0), delayer_for(moves, "worker", 2, 0)
    assert w1.sample(5, measured=0.01, elapsed=0.5) == pytest.approx(0.03) and w2.sample(5, 0.01, elapsed=0.5) == 0
    assert w1.sample(500, measured=0.01, elapsed=1.5) == 0 and w2.sample(9, 0.01, elapsed=1.5) == pytest.approx(0.03)
    window = delayer_for(load_scenario("slow-server-window").stragglers, "server", 1, 0)
    samples = [window.sample(0, elapsed=t) for t in (0.1, 0.5, 1.4, 1.6)]
    assert samples == [0.0, pytest.approx(0.045), pytest.approx(0.045), 0.0]
    burst = delayer_for(load_scenario("spike-burst").stragglers, "worker", 0, 0)
    inside = [burst.sample(step, measured=0.01, elapsed=0.3 + step * 1e-4) for step in range(2000)]
    outside = [burst.sample(step, measured=0.01, elapsed=1.5 + step * 1e-3) for step in range(2000)]
    assert 0.02 < np.mean([x > 0 for x in inside]) < 0.1 and not any(outside)
