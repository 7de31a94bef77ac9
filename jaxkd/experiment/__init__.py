"""Experiments as data: the config schema, and building models, data and objectives from it."""
