"""Exponential families and their parameterizations."""
