"""Kubeflow pipeline definitions; each compiles to the YAML beside it."""
