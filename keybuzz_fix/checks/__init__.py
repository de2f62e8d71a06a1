"""Pure judgements over gathered facts: the scorecard and the diagnosis, and the HTTP checks they score."""
