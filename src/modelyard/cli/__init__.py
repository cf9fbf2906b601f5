"""The ``modelyard`` command; client commands talk to the server over HTTP like any client."""
