"""Shared by tests that prove code stays offline."""

import socket
import textwrap
import urllib.request

import torch


def refuse_network(monkeypatch) -> None:
    """Make any network access (socket connect, urllib, torch.hub download) fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# Prelude of a `python -c` child: sockets refuse and record every call in `calls` (json, os, sys imported),
# and ultralytics must not be imported yet.
SUBPROCESS_NO_NETWORK = textwrap.dedent("""
    import json, os, socket, sys
    calls = []
    def no_network(*args, **kwargs):
        calls.append(repr(args[:2]))
        raise OSError("network disabled in this test")
    socket.getaddrinfo = socket.create_connection = no_network
    socket.socket.connect = socket.socket.connect_ex = no_network
    assert "ultralytics" not in sys.modules
""")
