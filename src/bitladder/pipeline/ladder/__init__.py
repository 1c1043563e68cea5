"""The precision ladder: rung names, the run down the rungs, its summary, mixed precision."""
