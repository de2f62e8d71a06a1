"""UFW on the nodes: the rule model, its facts, the plan and its application."""
