"""Streamed post-training quantisation: models larger than memory, one block at a time (:mod:`.run`)."""
