"""Stratum reconcilers: one package per part of the ops repo."""
