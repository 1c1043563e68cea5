"""Recipes: parsing, their steps, and the compress run that executes them."""
