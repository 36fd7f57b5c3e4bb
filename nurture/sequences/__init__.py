"""Sequence definitions live here as YAML files, one per sequence; ``loader`` reads and validates them."""
