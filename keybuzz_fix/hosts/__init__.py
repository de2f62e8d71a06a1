"""The SSH side: sessions, the thread pool over hosts, and what the tool reads and changes on them."""
