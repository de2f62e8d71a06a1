"""The imperative shells, one per command: observe, plan, show, confirm, apply, report."""
