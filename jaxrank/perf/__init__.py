"""Measuring a step: FLOP counts, MFU, compile clocks, profiles, cost models, collectives."""
