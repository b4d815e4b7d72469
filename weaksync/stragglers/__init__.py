"""Stragglers: synthetic delay models and rules (delays), cited scenarios (scenarios), real CPU limits (cgroup)."""

from .delays import (
    ConstantDelay,
    Delayer,
    DelaySpec,
    FailSlowDelay,
    LogNormalDelay,
    ParetoDelay,
    Sampler,
    ShiftedExpDelay,
    SpikeDelay,
    StragglerRule,
    TraceDelay,
    delayer_for,
    make_sampler,
)
from .scenarios import SCENARIO_DIR, Scenario, list_scenarios, load_scenario

__all__ = [
    "SCENARIO_DIR",
    "ConstantDelay",
    "DelaySpec",
    "Delayer",
    "FailSlowDelay",
    "LogNormalDelay",
    "ParetoDelay",
    "Sampler",
    "Scenario",
    "ShiftedExpDelay",
    "SpikeDelay",
    "StragglerRule",
    "TraceDelay",
    "delayer_for",
    "list_scenarios",
    "load_scenario",
    "make_sampler",
]
