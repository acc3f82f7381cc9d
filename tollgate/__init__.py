"""Tollgate, online charging: the one namespace it installs (engine, bench, server, v1).

In the repository, tollgate/engine, tollgate/bench and tollgate/server.py are links to the
top-level engine/, bench/ and server.py, so the tree keeps its layout while every import, the
tests' and the installed wheel's alike, names one package; tollgate.v1 is generated from proto/.
"""
