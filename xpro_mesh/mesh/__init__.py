"""The mesh: membership, failure detection, message authentication, transport and wire format."""
