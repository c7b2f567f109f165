"""The ``prism`` command: ``prism serve`` starts a server; every other command is a
client of the API.

May import: ``prism.server`` (for ``serve``) and the core; never the
manager or the front door.
"""
