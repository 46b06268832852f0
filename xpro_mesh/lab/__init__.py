"""The lab: network namespaces, traffic and scenarios on one machine."""
