"""Flannel on the nodes: the overlay facts, and what ``overlay`` changes."""
