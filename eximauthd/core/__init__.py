"""The pure decisions: addresses, the socket protocol, relay policy, limits, password hashes,
rate-limit counting.  No I/O: everything here is a function of its arguments."""
