"""Everything that prints or prompts: rich text for people, JSON, JUnit and YAML for machines."""
