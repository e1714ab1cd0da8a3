"""Placeholder until the standardize function lands."""
