"""Pure judgements over gathered facts (the scorecard, the diagnosis, ingress-nginx as found); the URL checks."""
