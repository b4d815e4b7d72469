"""Discrete-event simulation: the protocol core driven by a simulated clock, for the scale questions."""
