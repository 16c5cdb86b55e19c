"""Execution: runs > gateway > tools | llm > sandbox."""
