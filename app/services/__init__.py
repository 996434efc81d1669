"""The services: the query pipeline, the write side, the projector, replay, recording, quality."""
