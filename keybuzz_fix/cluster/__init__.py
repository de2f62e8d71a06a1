"""The Kubernetes side: the API client, the connection, objects as dicts, and the plans over them."""
