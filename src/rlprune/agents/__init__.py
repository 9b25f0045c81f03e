"""Search methods. Importing this package registers every method by name."""

from rlprune.agents.base import SearchResult, get_method, list_methods, register_method

__all__ = ["SearchResult", "get_method", "list_methods", "register_method"]
