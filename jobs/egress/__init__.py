"""Egress: the allowlisting proxy to package registries, in a process of its own."""
