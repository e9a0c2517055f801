"""Localization of query images against a map."""
