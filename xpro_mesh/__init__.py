"""xpro-mesh: a masterless mesh of XDP reverse-firewall proxies (X-Pro with gossip)."""

__version__ = "0.1.0"
