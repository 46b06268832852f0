"""The pure core: X-Pro's algorithms and the gossip state, no I/O, no clock reads."""
