"""Adapters from the engine to the platforms: each is a thin sequence of GraphQL calls."""
