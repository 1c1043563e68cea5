"""Automatic search under an accuracy budget (Optuna studies)."""
