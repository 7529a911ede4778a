"""IKEv2 (RFC 7296) as a sans-I/O engine: bytes and time in; datagrams, timers, events out."""
