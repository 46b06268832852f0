"""The per-proxy agent: configuration, wiring of gossip, map sync, API and alerts."""
