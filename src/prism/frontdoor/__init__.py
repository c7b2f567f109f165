"""The front door: a client's connection from its first byte to the splice.

Sans-IO start-up machine, routing, client authentication, TLS, the proxy and the data
planes (pump, sockmap). May import branches, source, storage, runtime, durable, postgres
and core; never api, cli or the server.
"""
