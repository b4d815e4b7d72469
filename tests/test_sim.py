"""The simulator (weaksync/sim): the protocol core's own objects on a simulated clock. It reproduces the order
statistics of backup workers, coalescing makes messages per step O(S), it is deterministic, it predicts a
run from its logs, and it takes every protocol rule from the core."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from weaksync.cli.main import main as cli_main
from weaksync.config import load_config
from weaksync.sim.calibrate import comparison, load_run, simulate_run, step_samples
from weaksync.sim.engine import Simulation, even_blocks
from weaksync.sim.timing import TimeModel

SIM = Path(__file__).resolve().parents[1] / "weaksync" / "sim"
FREE = TimeModel(compute=1e-3, compute_cv=0, latency=0, bandwidth=1e15, message_cpu=0, byte_cpu=0, header_bytes=0)


def _backup(k: int, tau: float):
    return load_config(None, {
        "cluster.workers": 100, "cluster.servers": 1, "cluster.blocks": 1, "train.steps": 1, "sync.mode": "backup",
        "sync.k": k, "stragglers": [{"target": "worker", "ids": "all", "delay": {"kind": "shifted-exp", "mean": tau}}],
    })  # fmt: skip


def test_96_of_100_gains_what_the_order_statistics_say() -> None:
    """Chen et al. 2016's "96 + 4": with exponential compute times of mean τ, waiting for k of N costs
    τ(H_N − H_{N−k}), so 96 of 100 saves τ·H_4 per round against 100 of 100. Measured on the first round
    (every worker starts it together), same draws for both k; the realized top-4 spacing of each draw is a
    control variate (its mean is τ·H_4 exactly), so 60 draws pin the simulator's gain within a few percent."""
    tau, draws = 0.5, 60
    formula = tau * sum(1 / i for i in range(1, 5))
    configs = {k: _backup(k, tau) for k in (96, 100)}
    gains, spacings = [], []
    for seed in range(draws):
        first = {}
        for k, config in configs.items():
            sim = Simulation(config, FREE, [4], [0], seed=seed)
            sim.run()
            first[k] = sim.update_times[0]
        computes = sorted(st.computes[0] for st in sim.stats)
        gains.append(first[100] - first[96])
        spacings.append(computes[99] - computes[95])
    controlled = float(np.mean(np.subtract(gains, spacings))) + formula
    assert abs(controlled - formula) <= 0.05 * formula, (controlled, formula)
    assert abs(np.mean(gains) - formula) <= 0.2 * formula  # the raw mean, within its sampling error (~6 %)


def test_coalescing_makes_messages_per_step_a_matter_of_servers_not_blocks() -> None:
    config = load_config(None, {"cluster.workers": 4, "cluster.servers": 2, "cluster.blocks": 64,
                                "train.steps": 20, "sync.mode": "bsp"})  # fmt: skip
    sizes, owners = even_blocks(600_000, 64, 2)
    per_block = Simulation(config, TimeModel(), sizes, owners, coalesce=False).run()
    coalesced = Simulation(config, TimeModel(), sizes, owners).run()  # as the config says: coalesced
    assert per_block["traffic"]["msgs_per_step"] == pytest.approx(3 * 64, rel=0.02)
    assert coalesced["traffic"]["msgs_per_step"] <= 3 * 2 * 1.05  # and the start's full pull, over 80 steps
    # the same rounds (up to where the budget cut the last one of each block), in fewer messages
    assert min(coalesced["updates"], per_block["updates"]) >= 64 * 18
    assert coalesced["step_time"]["p50"] < per_block["step_time"]["p50"]  # per-message costs gone


def test_a_workers_send_cost_delays_its_messages_and_is_not_counted_as_compute() -> None:
    """As in the runtime: the core's step ends with the compute (auto's overhead), the messages leave after."""
    config = load_config(None, {"cluster.workers": 2, "cluster.servers": 1, "train.steps": 30, "sync.mode": "bsp"})
    sizes, owners = even_blocks(1000, 1, 1)
    sim = Simulation(config, FREE.model_copy(update={"send_samples": {0: [0.002], 1: [0.002]}}), sizes, owners)
    assert sim.run()["step_time"]["p50"] == pytest.approx(0.003, rel=0.01)  # 1 ms compute + 2 ms sending
    assert [w.compute for w in sim.workers] == pytest.approx([1e-3, 1e-3])


def test_on_a_shared_machine_messages_cost_more_while_workers_compute() -> None:
    config = load_config(None, {"cluster.workers": 4, "cluster.servers": 1, "train.steps": 30, "sync.mode": "async"})
    sizes, owners = even_blocks(1000, 1, 1)
    costly = FREE.model_copy(update={"message_cpu": 1e-3})
    own = Simulation(config, costly, sizes, owners).run()["step_time"]["p50"]
    roomy = Simulation(config, costly.model_copy(update={"shared_cores": 64}), sizes, owners).run()
    crowded = Simulation(config, costly.model_copy(update={"shared_cores": 1}), sizes, owners).run()
    assert roomy["step_time"]["p50"] == pytest.approx(own)  # more cores than processes: as if each had its own
    assert crowded["step_time"]["p50"] > 1.25 * own  # 8 ms a step with a CPU per host, 11 ms on one core


def test_same_seed_same_run_and_the_straggler_rules_apply() -> None:
    base = {"cluster.workers": 4, "cluster.servers": 2, "train.steps": 40, "sync.mode": "bsp"}
    sizes, owners = even_blocks(600_000, 2, 2)
    one = Simulation(load_config(None, base), TimeModel(), sizes, owners, seed=3).run()
    two = Simulation(load_config(None, base), TimeModel(), sizes, owners, seed=3).run()
    assert {k: v for k, v in one.items() if k != "simulation"} == {k: v for k, v in two.items() if k != "simulation"}
    slow = Simulation(load_config(None, {**base, "scenario": "slow-worker-x4"}), TimeModel(), sizes, owners).run()
    tolerant = Simulation(
        load_config(None, {**base, "scenario": "slow-worker-x4", "sync.mode": "backup"}), TimeModel(), sizes, owners
    ).run()
    assert slow["step_time"]["p50"] > 3 * one["step_time"]["p50"]  # bsp waits for the ×4 worker
    assert tolerant["step_time"]["p50"] < 0.5 * slow["step_time"]["p50"]  # backup does not


def test_calibration_reads_a_runs_compute_less_what_was_injected_and_its_send_cost(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "events").mkdir(parents=True)
    (run / "config.yaml").write_text("cluster: {workers: 2, servers: 1}\nsync: {mode: bsp}\ntrain: {steps: 30}\n")
    (run / "meta.json").write_text(json.dumps({"theta_size": 1000, "num_blocks": 1, "num_servers": 1}))
    steps, t = [], 0.0
    for i in range(30):
        steps.append(
            {"ev": "step", "w": 0, "step": i, "t": t, "t_end": t + 0.03, "t_push": t + 0.032, "injected": 0.01}
        )
        t += 0.035
    (run / "events" / "worker-0.jsonl").write_text("".join(json.dumps(e) + "\n" for e in steps))
    (run / "events" / "worker-1.jsonl").write_text(
        json.dumps({"ev": "step", "w": 1, "step": 0, "t": 0.0, "t_end": 0.03}) + "\n"
    )
    (run / "summary.json").write_text(json.dumps({"steps_per_s": 57.0, "step_time": {"p50": 0.035}, "traffic": {}}))
    compute, send = step_samples(run)
    assert compute[0] == pytest.approx([0.02] * 30) and compute[1] == pytest.approx([0.03])
    assert send[0] == pytest.approx([0.002] * 30) and send[1] == [0.0]
    loaded = load_run(run)
    figures = {name: (sim, real) for name, sim, real in comparison(simulate_run(loaded, FREE), loaded.measured)}
    assert figures["step time p50 (s)"][1] == 0.035 and figures["step time p50 (s)"][0] == pytest.approx(0.03, rel=0.1)


def test_the_simulator_takes_every_protocol_rule_from_the_core() -> None:
    """The simulator drives ServerCore and WorkerCore: it imports them, calls their events, and has no rule of
    its own (no quorum, staleness, readiness or budget logic, no policy threshold read for a decision)."""
    sources = {path.name: path.read_text() for path in SIM.glob("*.py")}
    engine = ast.parse(sources["engine.py"])
    imported = {alias.name for node in ast.walk(engine) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert {"ServerCore", "WorkerCore"} <= imported
    called = {n.func.attr for n in ast.walk(engine) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {
        "on_push_many",
        "on_pull_many",
        "on_timer",
        "next_deadline",
        "on_blocks",
        "ready",
        "begin_step",
        "end_step",
    } <= called
    rules = {"within_staleness", "quorum", "_close_if_due", "_servable", "staleness_bound", "steps_done"}
    for name, source in sources.items():
        tree = ast.parse(source)
        used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not used & rules, (name, used & rules)
        read = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
                and n.value.attr == "policy"}  # fmt: skip
        assert read <= {"k", "b"}, (name, read)  # only reported in the summary


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.argv", ["weaksync", *args])
    code = 0
    try:
        cli_main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_cli_runs_and_names_a_bad_time_field(monkeypatch, capsys, tmp_path: Path) -> None:
    code, out, err = _cli(monkeypatch, capsys, "simulate", "--workers", "8", "--blocks", "4", "--steps", "5",
                          "--coalesce", "--out", str(tmp_path / "sim.json"))  # fmt: skip
    assert code == 0, err
    assert "simulated auto N=8 S=2 B=4 coalesced" in out.replace("\n", " ")
    assert json.loads((tmp_path / "sim.json").read_text())["steps"] == 8 * 5
    code, _, err = _cli(monkeypatch, capsys, "simulate", "--set", "time.latncy=1")
    assert code == 2 and " ".join(err.split()) == (
        "weaksync: error: --set time.latncy: extra inputs are not permitted: see the fields of weaksync/sim/timing.py"
    )


def test_a_simulation_gives_back_the_garbage_collector_as_it_found_it() -> None:
    """The event loop runs with the cyclic collector off (it makes no cycles, and the collector's passes cost a
    third of a large run); whether the run ends, or a callback raises, the caller's setting comes back."""
    import gc

    config = load_config(None, {"cluster.workers": 2, "cluster.servers": 1, "train.steps": 3, "sync.mode": "bsp"})
    sizes, owners = even_blocks(1_000, 2, 1)
    seen: list[bool] = []
    sim = Simulation(config, TimeModel(), sizes, owners)
    sim.at(0.0, lambda: seen.append(gc.isenabled()))
    assert gc.isenabled() and sim.run()["steps"] > 0 and gc.isenabled() and seen == [False]
    failing = Simulation(config, TimeModel(), sizes, owners)
    failing.at(0.0, lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.run()
    assert gc.isenabled()
    gc.disable()
    try:
        Simulation(config, TimeModel(), sizes, owners).run()
        assert not gc.isenabled()  # off it was, off it stays
    finally:
        gc.enable()
