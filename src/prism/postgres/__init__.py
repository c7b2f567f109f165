"""Postgres as Prism speaks and runs it: the wire codec, SCRAM, connection
strings, Prism's own small client, the binaries and the server settings Prism owns.

May import core only.
"""
