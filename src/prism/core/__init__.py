"""The types and rules every layer uses: errors, names, addresses, events, host names,
settings, crash points, secret files.

Imports nothing of Prism outside core.
"""
